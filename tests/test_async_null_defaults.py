"""AsyncNullConnectionPool's default max_size (None: no bound) must pass the size checks."""

from __future__ import annotations

import asyncio

from psycopool import AsyncNullConnectionPool


def test_default_max_size_is_accepted_and_lends(dsn: str) -> None:
    async def main() -> None:
        async with AsyncNullConnectionPool(dsn) as pool:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")

    asyncio.run(asyncio.wait_for(main(), 30))
