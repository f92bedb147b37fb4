"""Behind a connection pooler (PgBouncer, PgCat, Supavisor, RDS Proxy): the ``pooler`` setting.

``pooler="transaction"`` says that every transaction may run on a different server
connection, shared with other clients. The pool then relies on no session state of its own:

- psycopg 3's automatic server-side prepared statements are off (``prepare_threshold=None``)
  unless the connection kwargs ask for them (a pooler that tracks them, such as PgBouncer
  >= 1.21 with ``max_prepared_statements``);
- ``reset="discard"`` is refused: ``DISCARD ALL`` would reset whichever server connection the
  pooler picks, maybe one in another client's use (the pooler's own ``server_reset_query``
  is the place for it);
- a returned connection's session attributes are restored client-side only: a psycopg2
  connection whose ``isolation_level``/``readonly``/``deferrable`` were set in autocommit mode
  (psycopg2 sent a session ``SET`` for them) is closed instead of being "restored" by a second
  ``SET`` that would land on yet another server connection.

``None`` (the default) and ``"session"`` change nothing: to the pool a session pooler is a server.
"""

from __future__ import annotations

from typing import Any, Literal

Pooler = Literal["session", "transaction"] | None

POOLERS = (None, "session", "transaction")


def check_pooler(pooler: Any, reset: Any) -> Pooler:
    """``pooler`` validated against the other settings; ValueError naming what is wrong."""
    if pooler not in POOLERS:
        raise ValueError(f"pooler must be None, 'session' or 'transaction'; got {pooler!r}")
    if pooler == "transaction" and reset == "discard":
        raise ValueError(
            "reset='discard' can't be used with pooler='transaction': DISCARD ALL would reset"
            " whichever server connection the pooler picks, maybe one another client is"
            " using. Leave resets of server sessions to the pooler (PgBouncer's"
            " server_reset_query, run in session mode), or use reset='rollback'"
        )
    return pooler  # type: ignore[no-any-return]


def connect_kwargs(pooler: Pooler, driver_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for the driver's connect, with what ``pooler`` implies (a new dict)."""
    if pooler == "transaction" and driver_name == "psycopg" and "prepare_threshold" not in kwargs:
        return {**kwargs, "prepare_threshold": None}
    return kwargs


def session_sql(pooler: Pooler) -> bool:
    """May the pool send session-level statements (SET) on its connections?"""
    return pooler != "transaction"
