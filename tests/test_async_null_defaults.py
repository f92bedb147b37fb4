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
