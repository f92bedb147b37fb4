"""Async peer adapters: every asyncio pool the bench compares, behind one small interface.

The same :class:`~psycopool.bench.peers.Peer` attributes (key, label, modules, ...), with
``is_async = True`` and coroutine methods: ``aopen``, ``aget``, ``aput``, ``aclose``,
``aconnection`` (an async context manager) and ``aquery`` (run one statement, fetch its row).
Connections carry ``application_name=psycopool-bench-<key>`` as the sync peers' do.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from psycopool.bench.peers_base import _GET_TIMEOUT, Peer, app_name

__all__ = ["ASYNC_PEERS", "AsyncPeer"]


class AsyncPeer(Peer):
    """One asyncio pool under test."""

    is_async: ClassVar[bool] = True

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        raise NotImplementedError

    # The defaults fit a pool object with psycopg_pool's getconn/putconn/close.

    async def aget(self) -> Any:
        return await self.pool.getconn()

    async def aput(self, conn: Any) -> None:
        await self.pool.putconn(conn)

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    @contextlib.asynccontextmanager
    async def _get_put(self) -> AsyncIterator[Any]:  # type: ignore[override]
        conn = await self.aget()
        try:
            yield conn
        finally:
            await self.aput(conn)

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        return self._get_put()

    async def aquery(self, conn: Any, sql: str) -> Any:
        """Run ``sql`` on a psycopg AsyncConnection and fetch its row (other drivers override)."""
        cur = await conn.execute(sql, prepare=False)
        return await cur.fetchone()


class PsycopoolAsyncPeer(AsyncPeer):
    key = "psycopool-async"
    label = "psycopool AsyncConnectionPool"
    modules = ("psycopg",)
    distributions = ("psycopool",)
    is_psycopool = True
    driver = "psycopg"

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        from psycopool import AsyncConnectionPool

        self.pool = AsyncConnectionPool(dsn, min_size=min_size, max_size=max_size)
        await self.pool.open(wait=True, timeout=60.0)

    async def aget(self) -> Any:
        return await self.pool.getconn(_GET_TIMEOUT)

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        cm: AbstractAsyncContextManager[Any] = self.pool.connection(_GET_TIMEOUT)
        return cm


class PsycopoolAsyncWithPeer(PsycopoolAsyncPeer):
    key = "psycopool-async-with"
    label = "psycopool AsyncConnectionPool async with"
    uses_context = True


class PsycopgPoolAsyncPeer(AsyncPeer):
    key = "psycopg_pool-async"
    label = "psycopg_pool AsyncConnectionPool"
    modules = ("psycopg", "psycopg_pool")
    distributions = ("psycopg-pool", "psycopg")
    install_hint = "pip install 'psycopg[binary]' psycopg-pool"
    driver = "psycopg"

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        psycopg_pool: Any = importlib.import_module("psycopg_pool")
        self.pool = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=min_size, max_size=max_size, open=False, timeout=_GET_TIMEOUT
        )
        await self.pool.open(wait=True, timeout=60.0)

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        cm: AbstractAsyncContextManager[Any] = self.pool.connection()
        return cm


class PsycopgPoolAsyncWithPeer(PsycopgPoolAsyncPeer):
    key = "psycopg_pool-async-with"
    label = "psycopg_pool AsyncConnectionPool async with"
    uses_context = True


def _conninfo(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    return dict(conninfo_to_dict(dsn))


class AsyncpgPeer(AsyncPeer):
    """asyncpg's pool (its own driver: it resets the session on every release)."""

    key = "asyncpg"
    label = "asyncpg Pool"
    modules = ("asyncpg",)
    distributions = ("asyncpg",)
    install_hint = "pip install asyncpg"
    driver = "asyncpg"

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        asyncpg: Any = importlib.import_module("asyncpg")
        info = _conninfo(dsn)
        self.pool = await asyncpg.create_pool(
            host=info.get("host"),
            port=int(info.get("port", 5432)),
            user=info.get("user"),
            password=info.get("password"),
            database=info.get("dbname"),
            min_size=min_size,
            max_size=max_size,
            server_settings={"application_name": info.get("application_name", app_name(self.key))},
        )

    async def aget(self) -> Any:
        return await self.pool.acquire(timeout=_GET_TIMEOUT)

    async def aput(self, conn: Any) -> None:
        await self.pool.release(conn)

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        cm: AbstractAsyncContextManager[Any] = self.pool.acquire(timeout=_GET_TIMEOUT)
        return cm

    async def aquery(self, conn: Any, sql: str) -> Any:
        return await conn.fetchrow(sql)


class AsyncpgWithPeer(AsyncpgPeer):
    key = "asyncpg-with"
    label = "asyncpg Pool async with"
    uses_context = True


class SQLAlchemyAsyncPeer(AsyncPeer):
    """SQLAlchemy's async engine on psycopg 3: ``async with engine.connect()`` only."""

    key = "sqlalchemy-async"
    label = "SQLAlchemy async engine"
    modules = ("sqlalchemy.ext.asyncio", "psycopg")
    distributions = ("SQLAlchemy",)
    install_hint = "pip install sqlalchemy"
    uses_context = True
    driver = "psycopg"

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import URL
        from sqlalchemy.ext.asyncio import create_async_engine

        info = _conninfo(dsn)
        url = URL.create(
            "postgresql+psycopg",
            username=info.get("user"),
            password=info.get("password"),
            host=info.get("host"),
            port=int(info.get("port", 5432)),
            database=info.get("dbname"),
            query={"application_name": info.get("application_name", app_name(self.key))},
        )
        self._text = text
        self.pool = create_async_engine(url, pool_size=max_size, max_overflow=0)
        held = [await self.pool.connect() for _ in range(min_size)]  # warm min_size
        for conn in held:
            await conn.exec_driver_sql("SELECT 1")
        for conn in held:
            await conn.close()

    async def aget(self) -> Any:
        conn = await self.pool.connect()
        return conn

    async def aput(self, conn: Any) -> None:
        await conn.close()

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.dispose()

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        cm: AbstractAsyncContextManager[Any] = self.pool.connect()
        return cm

    async def aquery(self, conn: Any, sql: str) -> Any:
        result = await conn.exec_driver_sql(sql)
        return result.fetchone()


class FifoFuturePool:
    """The least an asyncio pool can do: a deque of idle connections, a deque of futures (FIFO).

    Its peer calls ``getconn``/``putconn`` as every other async peer calls its
    pool's, so the rows differ only by what the pools do.
    """

    def __init__(self) -> None:
        self._idle: collections.deque[Any] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._all: list[Any] = []

    async def open(self, dsn: str, size: int) -> None:
        import psycopg

        for _ in range(size):
            conn = await psycopg.AsyncConnection.connect(dsn)
            self._all.append(conn)
            self._idle.append(conn)

    async def getconn(self) -> Any:
        if self._idle:
            return self._idle.pop()
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                await self.putconn(future.result())  # handed over as the cancel landed
            raise

    async def putconn(self, conn: Any) -> None:
        if conn.pgconn.transaction_status != 0:
            await conn.rollback()
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(conn)
                return
        self._idle.append(conn)

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._idle.clear()


class FloorAsyncPeer(AsyncPeer):
    """The floor pool (:class:`FifoFuturePool`) behind the same adapter as every pool."""

    key = "floor-async"
    label = "floor: deque+futures"
    modules = ("psycopg",)
    distributions = ()
    driver = "psycopg"

    async def aopen(self, dsn: str, min_size: int, max_size: int) -> None:
        self.pool = FifoFuturePool()
        await self.pool.open(dsn, max_size)


class _FloorBorrowed:
    """The floor's ``async with``: commit on success, roll back on error, return."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: FifoFuturePool) -> None:
        self._pool = pool
        self._conn: Any = None

    async def __aenter__(self) -> Any:
        self._conn = conn = await self._pool.getconn()
        return conn

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self._conn
        try:
            if conn.pgconn.transaction_status != 0:
                await (conn.commit() if exc_type is None else conn.rollback())
        finally:
            await self._pool.putconn(conn)


class FloorAsyncWithPeer(FloorAsyncPeer):
    key = "floor-async-with"
    label = "floor: deque+futures async with"
    uses_context = True

    def aconnection(self) -> AbstractAsyncContextManager[Any]:
        return _FloorBorrowed(self.pool)


#: Every async peer, in table order. psycopool's rows first.
ASYNC_PEERS: tuple[type[AsyncPeer], ...] = (
    PsycopoolAsyncPeer,
    PsycopoolAsyncWithPeer,
    PsycopgPoolAsyncPeer,
    PsycopgPoolAsyncWithPeer,
    AsyncpgPeer,
    AsyncpgWithPeer,
    SQLAlchemyAsyncPeer,
    FloorAsyncPeer,
    FloorAsyncWithPeer,
)
