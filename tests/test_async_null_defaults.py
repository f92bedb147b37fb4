"""AsyncNullConnectionPool: its size rules (no bound by default, min_size 0) and max_lifetime."""

from __future__ import annotations

import asyncio

import pytest

from psycopool import AsyncNullConnectionPool, PoolTimeout


def test_default_max_size_is_accepted_and_lends(dsn: str) -> None:
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn) as pool:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

    asyncio.run(asyncio.wait_for(main(), 30))


@pytest.mark.parametrize("unbounded", [None, 0])
def test_no_bound_is_none_or_0_and_reported_as_0(dsn: str, unbounded: int | None) -> None:
    """psycopg_pool's rule and report: max_size None or 0 is no bound, shown as 0."""

    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=unbounded) as pool:
            held = [await pool.getconn() for _ in range(3)]  # more than any small bound
            assert pool.max_size == 0 and pool.get_stats()["pool_max"] == 0
            for conn in held:
                await pool.putconn(conn)
            await pool.resize(0, 2)
            assert pool.max_size == 2 and pool.get_stats()["pool_max"] == 2
            await pool.resize(0, 0)
            assert pool.max_size == 0
        with pytest.raises(ValueError, match="min_size must be 0 for a null pool; got min_size=1"):
            AsyncNullConnectionPool(dsn, min_size=1)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_connection_opened_for_a_borrower_still_expires(dsn: str) -> None:
    """max_lifetime applies to a connection the null pool opened for a borrower, handed on."""

    async def main() -> list[int]:
        pids: list[int] = []
        async with AsyncNullConnectionPool(dsn, max_size=1, max_lifetime=0.2) as pool:

            async def worker() -> None:
                async with pool.connection() as conn:
                    pids.append(conn.info.backend_pid)
                    await asyncio.sleep(0.1)

            await asyncio.gather(*(worker() for _ in range(5)))
        return pids

    pids = asyncio.run(asyncio.wait_for(main(), 30))
    assert pids[0] != pids[4], pids


def test_resize_keeps_min_size_zero(dsn: str) -> None:
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, max_size=2) as pool:
            with pytest.raises(ValueError, match="min_size"):
                await pool.resize(1)
            await pool.resize(0, 3)
            assert (pool.min_size, pool.max_size) == (0, 3)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_wait_names_a_connection_failure_as_pool_timeout(dsn: str) -> None:
    async def configure(conn: object) -> None:
        raise RuntimeError("configure failed on purpose")

    async def main() -> None:
        async with AsyncNullConnectionPool(dsn, configure=configure) as pool:
            with pytest.raises(PoolTimeout, match="configure failed on purpose"):
                await pool.wait(timeout=5)

    asyncio.run(asyncio.wait_for(main(), 30))
