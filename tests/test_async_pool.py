"""AsyncConnectionPool: life cycle, borrowing, FIFO waits, callables, returns, drain, stats.

Every test runs on asyncio and on uvloop (the ``arun`` fixture) against the real server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from _async import arun_fixture, scalar, until  # noqa: F401  (the arun fixture)

from psycopool import AsyncConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests


def test_constructed_without_a_loop_and_opening_outside_one_is_a_clear_error(dsn: str):
    pool = AsyncConnectionPool(dsn, min_size=1)  # no running loop needed
    assert pool.closed
    with pytest.raises(PoolError, match="running event loop"):
        AsyncConnectionPool(dsn, min_size=1, open=True)


def test_import_psycopool_imports_no_driver_and_no_asyncio():
    import subprocess
    import sys

    code = (
        "import sys, psycopool; bad = [m for m in ('psycopg', 'psycopg2', 'asyncio')"
        " if m in sys.modules]; assert not bad, bad; psycopool.AsyncConnectionPool"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_borrow_commit_rollback_and_async_with(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=2, max_size=2) as pool:
            await pool.wait(timeout=10)
            assert pg_server.count(app_name) == 2
            async with pool.connection() as conn:
                await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
                await conn.execute("INSERT INTO t VALUES (1)")
            with pytest.raises(ZeroDivisionError):
                async with pool.connection() as conn:
                    await conn.execute("INSERT INTO t VALUES (2)")
                    1 / 0  # noqa: B018
            conn = await pool.getconn()
            assert conn.pgconn.transaction_status == 0
            await pool.putconn(conn)
            # Both connections were used; only the committed row exists on either.
            for _ in range(2):
                async with pool.connection() as a, pool.connection() as b:
                    for c in (a, b):
                        try:
                            assert await scalar(c, "SELECT count(*) FROM t WHERE x = 2") == 0
                        except psycopg.errors.UndefinedTable:
                            pass  # the other session: the temp table isn't there
            stats = pool.get_stats()
            assert stats["connections_in_use"] == 0 and stats["pool_available"] == 2
        assert pg_server.wait_count(app_name, 0) == 0

    arun(main)


def test_fifo_order_and_no_barging(arun, dsn: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1) as pool:
            held = await pool.getconn()
            order: list[object] = []

            async def borrow(i: object) -> None:
                conn = await pool.getconn(timeout=10)
                order.append(i)
                await asyncio.sleep(0)
                await pool.putconn(conn)

            tasks = []
            for i in range(20):
                tasks.append(asyncio.ensure_future(borrow(i)))
                await asyncio.sleep(0)  # queued before the next one starts
            assert await until(lambda: pool.get_stats()["requests_waiting"] == 20)
            await pool.putconn(held)
            # Handed to the oldest waiter inside putconn: nothing idle for a newcomer,
            # who queues behind the others.
            assert pool.get_stats()["pool_available"] == 0
            tasks.append(asyncio.ensure_future(borrow("newcomer")))
            await asyncio.gather(*tasks)
            assert order == [*range(20), "newcomer"]

    arun(main)


def test_timeout_max_waiting_and_closed(arun, dsn: str):
    async def main() -> None:
        pool = AsyncConnectionPool(dsn, min_size=1, max_waiting=1)
        with pytest.raises(PoolClosed, match="not open"):
            await pool.getconn()
        await pool.open(wait=True)
        held = await pool.getconn()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(PoolTimeout) as info:
            await pool.getconn(timeout=0.2)
        assert 0.19 <= loop.time() - started < 2.0
        assert isinstance(info.value, psycopg.OperationalError)
        # asyncio.timeout() around getconn: the waiter leaves the queue.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.getconn()
        assert pool.get_stats()["requests_waiting"] == 0
        waiting = asyncio.ensure_future(pool.getconn(timeout=5))
        assert await until(lambda: pool.get_stats()["requests_waiting"] == 1)
        with pytest.raises(TooManyRequests):
            await pool.getconn(timeout=1)
        with pytest.raises(ValueError, match="timeout"):
            await pool.getconn(timeout=-1)
        await pool.close(timeout=0.1)
        with pytest.raises(PoolClosed):
            await waiting  # woken by close()
        await pool.putconn(held)  # lent before close(): closed by it, returning is fine
        with pytest.raises(PoolClosed):
            await pool.getconn()
        with pytest.raises(PoolClosed):
            await pool.open()

    arun(main)


def test_async_callables_conninfo_configure_check_reset(arun, dsn: str):
    calls: list[str] = []

    async def conninfo() -> str:
        calls.append("conninfo")
        return dsn

    async def configure(conn: Any) -> None:
        calls.append("configure")
        await conn.execute("SET application_name = 'configured'")

    async def check(conn: Any) -> None:
        calls.append("check")
        await conn.execute("SELECT 1")
        await conn.rollback()  # a check must leave the connection idle

    async def reset(conn: Any) -> None:
        calls.append("reset")
        await conn.execute("RESET search_path")

    async def main() -> None:
        async with AsyncConnectionPool(
            conninfo, min_size=1, configure=configure, check=check, reset=reset
        ) as pool:
            async with pool.connection(timeout=5) as conn:
                assert await scalar(conn, "SHOW application_name") == "configured"
                await conn.execute("SET search_path = nowhere")
            async with pool.connection() as conn:
                assert await scalar(conn, "SHOW search_path") != "nowhere"
        assert calls[:2] == ["conninfo", "configure"]
        assert calls.count("check") == 2 and calls.count("reset") == 2

    arun(main)


def test_failing_check_discards_and_the_borrower_keeps_waiting(arun, dsn: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, check=lambda c: 1 / 0) as pool:
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.5)
            assert pool.get_stats()["connections_num"] >= 2  # replaced, again and again
        async with AsyncConnectionPool(dsn, min_size=1, check="ping") as pool:
            async with pool.connection() as conn:
                assert await scalar(conn, "SELECT 1") == 1

    arun(main)


def test_session_attributes_restored_and_closed_connection_replaced(
    arun, dsn: str, pg_server, app_name: str
):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1) as pool:
            conn = await pool.getconn()
            await conn.set_autocommit(True)
            await conn.set_read_only(True)
            await pool.putconn(conn)
            conn = await pool.getconn()
            assert conn.autocommit is False and conn.read_only is None
            await pool.putconn(conn)
            with pytest.raises(ValueError, match="not lent"):
                await pool.putconn(conn)  # a second return is refused
            async with pool.connection() as conn:
                await conn.close()  # the block still ends cleanly
            assert await until(lambda: pool.get_stats()["pool_available"] == 1)
            assert pg_server.wait_count(app_name, 1) == 1

    arun(main)


def test_drain_replaces_idle_now_and_lent_on_return(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=2) as pool:
            await pool.wait()
            lent = await pool.getconn()
            before = set(pg_server.pids(app_name))
            await pool.drain()
            await pool.putconn(lent)
            assert await until(lambda: pool.get_stats()["pool_available"] == 2)
            after = set(pg_server.pids(app_name))
            assert pg_server.wait_count(app_name, 2) == 2
            assert not before & set(pg_server.pids(app_name)), (before, after)
            assert pool.pop_stats()["connections_drained"] == 2
            assert pool.get_stats()["connections_drained"] == 0

    arun(main)


def test_dead_idle_connection_replaced_and_reconnect_after_restart(
    arun, dsn: str, pg_server, app_name: str
):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=2) as pool:
            await pool.wait()
            pg_server.terminate(app_name)
            for _ in range(3):
                async with pool.connection(timeout=10) as conn:
                    assert await scalar(conn, "SELECT 1") == 1
            assert pool.get_stats()["connections_lost"] >= 1
            await pool.check()
            # The replacements open on this loop: wait for them without blocking it.
            assert await until(lambda: pool.get_stats()["pool_available"] == 2)
            assert pg_server.wait_count(app_name, 2) == 2

    arun(main)


def test_connection_class_and_typing(arun, dsn: str):
    class MyConn(psycopg.AsyncConnection[Any]):
        pass

    async def main() -> None:
        pool: AsyncConnectionPool[MyConn] = AsyncConnectionPool(
            dsn, min_size=1, connection_class=MyConn
        )
        async with pool:
            async with pool.connection() as conn:
                assert type(conn) is MyConn

    arun(main)
    with pytest.raises(ValueError, match="connection_class"):
        AsyncConnectionPool(dsn, connection_class=psycopg.Connection)


def test_reconnect_failed_called_once(arun):
    called: list[Any] = []

    async def main() -> None:
        pool = AsyncConnectionPool(
            "host=127.0.0.1 port=1 connect_timeout=1",
            min_size=1,
            reconnect_timeout=0.3,
            reconnect_failed=called.append,
        )
        async with pool:
            assert await until(lambda: called, timeout=10)
            with pytest.raises(PoolTimeout, match="last connection attempt failed"):
                await pool.getconn(timeout=0.1)
        assert called == [pool]

    arun(main)


def test_close_returns(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=2, close_returns=True) as pool:
            await pool.wait()
            conn = await pool.getconn()
            await conn.close()  # returned, not closed
            assert not conn.closed
            assert pool.get_stats()["pool_available"] == 2
            assert pg_server.count(app_name) == 2
        assert conn.closed  # the pool's close really closes it
        assert pg_server.wait_count(app_name, 0) == 0

    arun(main)


def test_abandoned_pool_warns_once_naming_it(arun, dsn: str, pg_server, app_name: str):
    import gc
    import warnings

    async def main() -> None:
        pool = AsyncConnectionPool(dsn, min_size=2, name="abandoned")
        await pool.open(wait=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del pool
            for _ in range(3):
                gc.collect()
                await asyncio.sleep(0)
        messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
        assert len(messages) == 1 and "'abandoned'" in messages[0], messages
        assert pg_server.wait_count(app_name, 0) == 0

    arun(main)


def test_requests_num_counts_each_borrow_once(arun, dsn: str):
    """A borrow served at once and one that waited are one request each (not two for a wait)."""

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1) as pool:
            await pool.wait()
            held = await pool.getconn()  # served from the idle stack
            waiter = asyncio.ensure_future(pool.getconn(timeout=5))
            assert await until(lambda: pool.get_stats().get("requests_waiting", 0) == 1)
            await pool.putconn(held)
            await pool.putconn(await waiter)  # handed over after a wait
            stats = pool.get_stats()
            assert stats["requests_num"] == 2, stats
            assert stats["requests_queued"] == 1, stats

    arun(main)
