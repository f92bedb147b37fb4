"""AsyncConnectionPool under cancellation: no connection lost, none lent twice, no cancel swallowed.

Each moment a task can be cancelled at is tested on its own (waiting, at the instant of the
handoff, holding, cleaning on return, closing), then all of them at random in a storm:
1,000 tasks on 4 connections, a third cancelled at random moments, several seeds, on asyncio
and uvloop. After each, the pool's own count equals the server's.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from _async import arun_fixture, scalar, until  # noqa: F401  (the arun fixture)

from psycopool import AsyncConnectionPool


async def settled(pool: AsyncConnectionPool[Any], pg_server: Any, app_name: str, n: int) -> None:
    """The pool is back to ``n`` idle connections, and the server sees exactly ``n``."""
    assert await until(lambda: pool.get_stats()["pool_available"] == n, timeout=10), pool
    stats = pool.get_stats()
    assert stats["connections_in_use"] == 0 and stats["pool_size"] == n, stats
    assert pg_server.wait_count(app_name, n) == n


def test_cancelled_while_waiting_leaves_the_queue(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1) as pool:
            held = await pool.getconn()
            task = asyncio.ensure_future(pool.getconn())
            assert await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool.get_stats()["requests_waiting"] == 0
            await pool.putconn(held)
            await settled(pool, pg_server, app_name, 1)

    arun(main)


def test_cancelled_at_the_instant_of_handoff_gives_the_connection_back(
    arun, dsn: str, pg_server, app_name: str
):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1) as pool:
            held = await pool.getconn()
            task = asyncio.ensure_future(pool.getconn())
            assert await until(lambda: pool.get_stats()["requests_waiting"] == 1)
            await pool.putconn(held)  # handed to the waiter's future, not yet run
            assert pool.get_stats()["connections_in_use"] == 1
            task.cancel()  # lands before the task resumes: the future has the entry
            with pytest.raises(asyncio.CancelledError):
                await task
            await settled(pool, pg_server, app_name, 1)
            async with pool.connection(timeout=1) as conn:  # and it is usable
                assert await scalar(conn, "SELECT 1") == 1

    arun(main)


def test_cancelled_while_holding_rolls_back_and_returns(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1) as pool:
            started = asyncio.Event()

            async def hold() -> None:
                async with pool.connection() as conn:
                    await conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (x int)")
                    await conn.execute("INSERT INTO t VALUES (1)")
                    started.set()
                    await conn.execute("SELECT pg_sleep(30)")

            task = asyncio.ensure_future(hold())
            await started.wait()
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await settled(pool, pg_server, app_name, 1)
            async with pool.connection(timeout=1) as conn:
                assert conn.pgconn.transaction_status == 0
                # Rolled back: the table made in that transaction is gone with it.
                assert await scalar(conn, "SELECT to_regclass('t')") is None

    arun(main, timeout=20)


def test_cancelled_while_cleaning_closes_and_replaces(arun, dsn: str, pg_server, app_name: str):
    cleaning = asyncio.Event

    async def main() -> None:
        in_reset = cleaning()

        async def slow_reset(conn: Any) -> None:
            in_reset.set()
            await asyncio.sleep(30)

        async with AsyncConnectionPool(dsn, min_size=1, reset=slow_reset) as pool:
            conn = await pool.getconn()
            task = asyncio.ensure_future(pool.putconn(conn))
            await in_reset.wait()
            assert pool.get_stats()["pool_size"] == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert conn.closed  # its state was unknown: closed, never lent again
            await settled(pool, pg_server, app_name, 1)  # replaced

    arun(main)


def test_cancelled_close_still_closes_everything(arun, dsn: str, pg_server, app_name: str):
    async def main() -> None:
        pool = AsyncConnectionPool(dsn, min_size=3)
        await pool.open(wait=True)
        lent = await pool.getconn()
        closing = asyncio.ensure_future(pool.close(timeout=30))  # waits for `lent`
        await asyncio.sleep(0.05)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert lent.closed
        assert pg_server.wait_count(app_name, 0) == 0
        await pool.putconn(lent)  # still fine after close
        assert pool.get_stats()["pool_size"] == 0

    arun(main)


async def storm(dsn: str, seed: int, pg_server: Any, app_name: str) -> dict[str, int]:
    """1,000 tasks on 4 connections; a third cancelled at random moments, some timed out."""
    rnd = random.Random(seed)
    counts = dict.fromkeys(("cancelled", "swallowed", "lent_twice", "timed_out", "errors"), 0)
    async with AsyncConnectionPool(dsn, min_size=4, timeout=60) as pool:
        await pool.wait(timeout=10)
        holding: set[int] = set()

        async def use(conn: Any, kind: float) -> None:
            if id(conn) in holding:
                counts["lent_twice"] += 1
            holding.add(id(conn))
            try:
                if kind < 0.3:
                    await conn.execute("SELECT 1")  # in a transaction: committed on exit
                elif kind < 0.4:
                    await conn.execute("SELECT 1")
                    raise LookupError("rolled back on exit")
                else:
                    await asyncio.sleep(0)
            finally:
                holding.discard(id(conn))

        async def work(kind: float, limit: float | None) -> None:
            if limit is None:
                async with pool.connection() as conn:
                    await use(conn, kind)
                return
            cm = asyncio.timeout(limit)
            try:
                async with cm:
                    async with pool.connection() as conn:
                        await use(conn, kind)
            except TimeoutError:
                counts["timed_out"] += 1
                return
            if cm.expired():
                counts["swallowed"] += 1  # the timeout fired, yet the block ended normally

        tasks = []
        for _ in range(1000):
            limit = rnd.uniform(0.0, 0.02) if rnd.random() < 0.1 else None
            tasks.append(asyncio.ensure_future(work(rnd.random(), limit)))
        requested = []
        for victim in rnd.sample(tasks, 333):
            await asyncio.sleep(rnd.random() * 0.002 if rnd.random() < 0.5 else 0)
            if victim.cancel():
                requested.append(victim)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        counts["cancelled"] = len(requested)
        counts["swallowed"] += sum(1 for t in requested if not t.cancelled())
        counts["errors"] = sum(
            1 for r in results if isinstance(r, Exception) and not isinstance(r, LookupError)
        )
        await settled(pool, pg_server, app_name, 4)
    assert pg_server.wait_count(app_name, 0) == 0
    return counts


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cancellation_storm(arun, dsn: str, pg_server, app_name: str, seed: int):
    counts = arun(lambda: storm(dsn, seed, pg_server, app_name), timeout=60)
    # The storm really interrupted tasks (fewer cancels land on a fast machine: tasks finish first).
    assert counts["cancelled"] + counts["timed_out"] >= 100, counts
    assert counts["swallowed"] == 0, counts
    assert counts["lent_twice"] == 0, counts
    assert counts["errors"] == 0, counts
