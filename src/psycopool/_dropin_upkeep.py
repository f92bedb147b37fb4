"""The drop-in's life cycle outside getconn and putconn, out of ``pool.py``.

:class:`DropinUpkeep`, a base of :class:`psycopool.pool.AbstractConnectionPool`,
holds what ``pool.py`` doesn't need on its hot paths: refilling to ``minconn``
(these pools have no thread), ``prune``, ``stats`` and ``closeall``.
:class:`PoolError` is defined here because this code and the borrow paths raise
it and no private module imports ``psycopool.pool``; users see it as
``psycopool.pool.PoolError``, as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg2

from psycopool._drivers import hide_password
from psycopool._entries import PooledConnection
from psycopool._errors import PoolError as _PoolErrorBase

if TYPE_CHECKING:
    from psycopool._engine import Engine

    class _PoolAttributes:
        """AbstractConnectionPool's attributes (set in its __init__), for mypy."""

        minconn: int
        maxconn: int
        idle_timeout: float | None
        closed: bool
        name: str
        _keys: int
        _used: dict[Any, Any]
        _engine: Engine

else:
    # At run time no base: annotations would add __annotations__ to the pools' dir().
    _PoolAttributes = object

logger = logging.getLogger("psycopool")


class PoolError(_PoolErrorBase, psycopg2.Error):
    """Raised by the pool itself: exhausted, closed, or a connection it did not lend.

    A subclass of :class:`psycopg2.Error`, as in psycopg2, so existing
    ``except psycopg2.Error`` blocks still catch it, and of
    :class:`psycopool.PoolError`.
    """

    # Named after the module users import it from (tracebacks, pickles, docs).
    __module__ = "psycopool.pool"


class DropinUpkeep(_PoolAttributes):
    """Refill, prune, stats and closeall of the drop-in pools (no I/O under the lock).

    Interrupt safety is the rule stated in ``pool.py`` above ``_getconn``: a
    slot reserved for I/O (``pending``, ``closing``) is released in a handler,
    and the lock is taken with ``with``.
    """

    def _release_reservation(self) -> None:
        """Give back a slot reserved for a connection that an interrupt lost (``pending``).

        The connection, if it was opened, is referenced by nothing any more: the
        driver closes it when it is garbage-collected.
        """
        with self._engine.lock:
            self._engine.pending -= 1

    # -- upkeep without a thread ---------------------------------------------

    def _refill(self, *, raise_errors: bool = False) -> None:
        """Open connections until ``minconn`` exist, as psycopg2's docs promise.

        Outside the constructor a failure is logged, not raised: the caller
        returned or pruned successfully, and ``getconn`` connects on demand.
        """
        engine = self._engine
        while True:
            reserved = [False]
            retired = False
            try:
                with engine.lock:
                    if self.closed or engine.size >= self.minconn:
                        return
                    engine.pending += 1
                    reserved[0] = True
                try:
                    entry = engine.open_connection(reserved)
                except Exception as exc:
                    if raise_errors:
                        raise
                    logger.warning(
                        "%r could not open a connection to keep minconn: %s",
                        self,
                        hide_password(str(exc).strip()),
                    )
                    return
                with engine.lock:
                    now = engine.clock()
                    engine.pending -= 1
                    reserved[0] = False
                    if not self.closed:
                        entry.idle_since = now
                        engine.idle.append(entry)
                        continue
                    engine.closing += 1
                    retired = True
            except BaseException:
                if reserved[0]:  # interrupted before the slot was given back or used
                    self._release_reservation()
                raise
            finally:
                if retired:
                    engine.close_one(entry)
            return

    def _prune(self) -> None:
        engine = self._engine
        expired: list[PooledConnection] = []
        dropped: list[PooledConnection] = []
        try:
            with engine.lock:
                if self.closed:
                    raise PoolError("connection pool is closed")
                engine.pop_dead_idle_locked(dropped)
                if self.idle_timeout:
                    engine.pop_expired_idle_locked(
                        self.idle_timeout, self.minconn, engine.clock(), expired
                    )
        finally:
            engine.close(dropped, "dead")
            engine.close(expired, "idle")
        self._refill()

    # -- observability -------------------------------------------------------

    def _stats(self) -> dict[str, int]:
        engine = self._engine
        with engine.lock:
            return {
                "pool_min": self.minconn,
                "pool_max": self.maxconn,
                "pool_size": engine.size,
                "pool_available": len(engine.idle),
                "connections_in_use": len(engine.in_use),
                # Every failed getconn here is "connection pool exhausted": both names count it.
                "requests_errors": engine.timeouts,
                "requests_timeouts": engine.timeouts,
                "connections_num": engine.connections_num,
                "connections_ms": engine.connections_ms,
                "connections_errors": engine.connections_errors,
                "connections_lost": engine.connections_lost,
            }

    # -- closeall ------------------------------------------------------------

    def _closeall(self) -> None:
        engine = self._engine
        entries: list[PooledConnection] = []
        try:
            with engine.lock:
                if self.closed:
                    raise PoolError("connection pool is closed")
                self.closed = True
                self._used.clear()
                engine.close_all_locked(entries)
        finally:
            engine.close(entries, "drained")
        engine.watcher.close()
