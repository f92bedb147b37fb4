"""AsyncNullConnectionPool: nothing kept idle, max_size still bounds, waits fair and bounded."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import psycopg
import pytest
from _async import arun_fixture, until  # noqa: F401  (the arun fixture)

from psycopool import AsyncConnectionPool, AsyncNullConnectionPool, PoolTimeout


def test_each_borrow_connects_each_return_closes(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=2) as pool:
            await pool.wait(timeout=10)  # one connection opened and closed: reachable
            assert pool.get_stats()["connections_num"] == 1
            async with pool.connection() as conn:
                assert pg_server.count(app_name) == 1
                pid = conn.info.backend_pid
            assert conn.closed
            assert pg_server.wait_count(app_name, 0) == 0
            async with pool.connection() as conn:
                assert conn.info.backend_pid != pid
            stats = pool.get_stats()
            assert stats["requests_queued"] == 0 and stats["pool_size"] == 0, stats

    arun(main)


def test_bounded_by_max_size_and_a_return_goes_to_the_waiter(
    arun, dsn: str, pg_server, app_name: str
):
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=2, timeout=5) as pool:
            a = await pool.getconn()
            b = await pool.getconn()
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.1)
            waiter = asyncio.ensure_future(pool.getconn())
            assert await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            await pool.putconn(a)  # handed over, not closed
            got = await waiter
            assert got is a and not a.closed
            assert pg_server.count(app_name) == 2
            await pool.putconn(b)
            await pool.putconn(got)
            assert pg_server.wait_count(app_name, 0) == 0
            assert pool.get_stats()["requests_queued"] == 2

    arun(main)


def test_cancelled_while_connecting_leaves_nothing(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=1) as pool:
            task = asyncio.ensure_future(pool.getconn())
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with pool.connection(timeout=5) as conn:  # the slot is free again
                await conn.execute("SELECT 1")
            assert pool.get_stats()["pool_size"] == 0
        assert pg_server.wait_count(app_name, 0) == 0

    arun(main)


Row = TypeVar("Row")


def test_generic_connection_class(arun, dsn: str):
    class MyConn(psycopg.AsyncConnection[Row]):
        pass

    async def main() -> None:
        for cls in (AsyncConnectionPool, AsyncNullConnectionPool):
            async with cls(dsn, min_size=0, max_size=1, connection_class=MyConn[Any]) as pool:
                async with pool.connection(timeout=5) as conn:
                    assert type(conn) is MyConn

    arun(main)


def test_a_slow_connect_given_up_is_closed_when_it_ends(arun, dsn: str, pg_server, app_name: str):
    """A borrower that stops waiting doesn't drop the connection being opened for it."""

    class SlowConn(psycopg.AsyncConnection[Any]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            conn = await super().connect(*args, **kwargs)
            await asyncio.sleep(0.3)  # connected, not yet handed to the pool
            return conn

    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=1, connection_class=SlowConn) as pool:
            with pytest.raises(PoolTimeout):
                await pool.wait(timeout=0.1)
            task = asyncio.ensure_future(pool.getconn())
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with pool.connection(timeout=5) as conn:  # served once the slot is free
                await conn.execute("SELECT 1")
        assert pg_server.wait_count(app_name, 0) == 0

    arun(main)
