"""SQLAlchemy 2 engines that draw their connections from a psycopool pool.

``create_engine(url, pool)`` is SQLAlchemy's ``create_engine`` with three public options set:
``creator`` borrows from the pool, ``poolclass=NullPool`` keeps SQLAlchemy from pooling a
second time, and ``pool_reset_on_return=None`` leaves the reset to psycopool (rollback and
session attributes), so nothing is reset twice. ``NullPool`` ends each checkout with the
connection's ``close()``; the borrowed connection's ``close()`` gives it back to the pool
instead of closing it. See ``docs/sqlalchemy.md`` for why this design and not another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from psycopool._args import show

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["ReturningConnection", "create_async_engine", "create_engine"]

#: Options create_engine() sets: passing them too is an error, not a silent override.
_OWN_OPTIONS = ("creator", "poolclass", "pool_reset_on_return", "async_creator")


def create_engine(url: str | sqlalchemy.URL, pool: Any, **kwargs: Any) -> Engine:
    """A SQLAlchemy :class:`~sqlalchemy.engine.Engine` whose connections come from ``pool``.

    ``pool`` is a :class:`psycopool.ConnectionPool` (with psycopg2: made with
    ``close_returns=True``), or a ``psycopool.pool`` drop-in whose connections are
    :class:`ReturningConnection`. The URL names the
    dialect and driver (``postgresql+psycopg2://`` or ``postgresql+psycopg://``); where
    to connect is the pool's business. ``engine.dispose()`` leaves the pool open: close
    it yourself when the application stops.
    """
    _check_arguments("create_engine", pool, kwargs)
    engine = sqlalchemy.create_engine(
        url,
        creator=_creator(pool),
        poolclass=NullPool,
        pool_reset_on_return=None,
        **kwargs,
    )
    event.listen(engine, "invalidate", _discard_on_invalidate)
    return engine


def create_async_engine(url: str | sqlalchemy.URL, pool: Any, **kwargs: Any) -> AsyncEngine:
    """A SQLAlchemy :class:`~sqlalchemy.ext.asyncio.AsyncEngine` on a
    :class:`psycopool.AsyncConnectionPool` (``postgresql+psycopg://`` URLs).

    The same design as :func:`create_engine`: ``async_creator`` borrows, ``NullPool``,
    no reset on return by SQLAlchemy, and the connection's ``close()`` gives it back.
    Open the pool first (``await pool.open()`` or ``async with pool``).
    """
    from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

    _check_arguments("create_async_engine", pool, kwargs)

    async def borrow() -> Any:
        conn = await pool.getconn()
        try:
            _lend_psycopg(conn, _AsyncGiveBack(pool))
        except BaseException:
            await pool.putconn(conn)
            raise
        return conn

    engine = sa_create_async_engine(
        url,
        async_creator=borrow,
        poolclass=NullPool,
        pool_reset_on_return=None,
        **kwargs,
    )
    event.listen(engine.sync_engine, "invalidate", _discard_on_invalidate)
    return engine


def _check_arguments(function: str, pool: Any, kwargs: dict[str, Any]) -> None:
    given = sorted(k for k in kwargs if k in _OWN_OPTIONS)
    if given:
        values = ", ".join(f"{k}={show(kwargs[k])}" for k in given)
        raise TypeError(
            f"{function}() sets {', '.join(given)} itself: pass the other options only;"
            f" got {values}"
        )
    if not (callable(getattr(pool, "getconn", None)) and callable(getattr(pool, "putconn", None))):
        # Shown masked: a conninfo or a URL passed as the pool may hold a password.
        raise TypeError(f"pool must be a psycopool pool; got {type(pool).__name__} {show(pool)}")


def _creator(pool: Any) -> Callable[[], Any]:
    def borrow() -> Any:
        conn = pool.getconn()
        try:
            _give_back_on_close(conn, pool)
        except BaseException:
            pool.putconn(conn)
            raise
        return conn

    return borrow


def _give_back_on_close(conn: Any, pool: Any) -> None:
    """Make ``conn.close()`` return ``conn`` to ``pool``, once."""
    module = type(conn).__module__.split(".")[0]
    if module == "psycopg":
        _lend_psycopg(conn, _GiveBack(pool))
        return
    if "psycopg2" in sys.modules:  # else conn can't be a psycopg2 connection
        from psycopool.sqlalchemy._psycopg2 import ReturningConnection

        if isinstance(conn, ReturningConnection):
            conn._psycopool_give_back = _GiveBack(pool).putconn
            return
    if getattr(pool, "close_returns", False) is True:
        return  # the pool makes its connections' close() return them itself
    raise TypeError(
        f"psycopool.sqlalchemy can't return a {type(conn).__module__}.{type(conn).__name__}"
        " to its pool when SQLAlchemy closes it: create the pool with close_returns=True"
        " (or, for the psycopool.pool drop-in,"
        " connection_factory=psycopool.sqlalchemy.ReturningConnection)"
    )


def _lend_psycopg(conn: Any, give_back: _GiveBack | _AsyncGiveBack) -> None:
    """psycopg 3.3's ``close()`` hands a connection to ``conn._pool.putconn()`` when that
    object says ``close_returns``: psycopg_pool's own protocol, used here for one loan."""
    import psycopg

    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    if (major, minor) < (3, 3):
        raise TypeError("psycopool.sqlalchemy needs psycopg >= 3.3 (close() returning)")
    if getattr(conn, "_psycopool_sqlalchemy", False):
        _forget_dialect_notice_handler(conn)
    conn._psycopool_sqlalchemy = True
    conn._pool = give_back


class _GiveBack:
    """What a lent connection's ``close()`` calls: back to the pool, and only once."""

    __slots__ = ("pool",)
    close_returns = True  # read by psycopg 3's Connection.close()

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def putconn(self, conn: Any) -> None:
        if getattr(conn, "_pool", None) is self:
            conn._pool = None  # from now on close() closes (the pool may discard it)
        self.pool.putconn(conn)


class _AsyncGiveBack:
    """The same for psycopg 3's ``AsyncConnection``, whose ``close()`` awaits ``putconn()``."""

    __slots__ = ("discard", "pool")
    close_returns = True

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.discard = False

    async def putconn(self, conn: Any) -> None:
        if getattr(conn, "_pool", None) is self:
            conn._pool = None
        if self.discard:
            try:
                await conn.close()  # a real close: the pool sees it closed and drops it
            except Exception:
                pass
        await self.pool.putconn(conn)


def _discard_on_invalidate(dbapi_connection: Any, record: Any, exc: BaseException | None) -> None:
    """SQLAlchemy invalidated the connection: close it for real, then give its slot back."""
    conn = record.driver_connection if record is not None else None
    if conn is None:
        conn = dbapi_connection
    give_back: Callable[[Any], None] | None = None
    lender = getattr(conn, "_pool", None)
    if isinstance(lender, _AsyncGiveBack):
        # No awaiting here: SQLAlchemy's close(), which follows, discards it.
        lender.discard = True
        return
    if isinstance(lender, _GiveBack):
        conn._pool = None
        give_back = lender.pool.putconn
    elif lender is not None and getattr(lender, "close_returns", False) is True:
        conn._pool = None  # a pool made with close_returns=True: it set this itself
        give_back = lender.putconn
    elif getattr(conn, "_psycopool_give_back", None) is not None:
        give_back, conn._psycopool_give_back = conn._psycopool_give_back, None
    if give_back is None:
        return
    try:
        conn.close()  # a real close now: the pool sees a closed connection and drops it
    except Exception:
        pass
    give_back(conn)


def _forget_dialect_notice_handler(conn: Any) -> None:
    """SQLAlchemy's psycopg dialect adds a notice handler to every connection it is given;
    a pooled connection is given again at every checkout: keep one, not one per checkout."""
    try:
        from sqlalchemy.dialects.postgresql import psycopg as dialect
    except ImportError:  # pragma: no cover - depends on SQLAlchemy's layout
        return
    handler = getattr(dialect, "_log_notices", None)
    if handler is None:
        return
    try:
        conn.remove_notice_handler(handler)
    except ValueError:
        pass


def __getattr__(name: str) -> Any:
    # ReturningConnection needs psycopg2: imported only when asked for.
    if name == "ReturningConnection":
        from psycopool.sqlalchemy._psycopg2 import ReturningConnection

        return ReturningConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
