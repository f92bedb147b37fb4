"""psycopool.sqlalchemy.create_async_engine: SQLAlchemy's AsyncEngine and AsyncSession on a
psycopool AsyncConnectionPool (psycopg 3), real server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from psycopool import AsyncConnectionPool
from psycopool.sqlalchemy import create_async_engine

pytest.importorskip("greenlet")

MAX = 4
TASKS = 8
REQUESTS = 25


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "psycopool_sa_async_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)


def _peak(pg_server: Any, app_name: str, stop: threading.Event, values: list[int]) -> None:
    while not stop.is_set():
        values.append(pg_server.count(app_name))
        time.sleep(0.01)


@pytest.mark.parametrize("close_returns", [False, True])
def test_async_orm_workload(pg_server: Any, app_name: str, dsn: str, close_returns: bool):
    async def main() -> tuple[list[str], int, dict[str, int]]:
        async with AsyncConnectionPool(
            dsn, min_size=1, max_size=MAX, timeout=10.0, close_returns=close_returns
        ) as pool:
            engine = create_async_engine("postgresql+psycopg://", pool)
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
                await conn.run_sync(Base.metadata.create_all)
            async with AsyncSession(engine) as session:
                session.add(Item(name="taken"))
                await session.commit()
            unexpected: list[str] = []

            async def requests(n: int) -> None:
                for i in range(REQUESTS):
                    kind = i % 5
                    async with AsyncSession(engine) as session:
                        if kind == 0:
                            session.add(Item(name=f"t{n}-{i}"))
                            await session.commit()
                        elif kind == 1:
                            session.add(Item(name=f"r{n}-{i}"))
                            await session.flush()
                            await session.rollback()
                        elif kind == 2:
                            session.add(Item(name="taken"))
                            try:
                                await session.flush()
                                unexpected.append("duplicate accepted")
                            except IntegrityError:
                                await session.rollback()
                            await session.execute(text("SELECT 1"))
                            await session.commit()
                        elif kind == 3:
                            await session.connection(
                                execution_options={"isolation_level": "SERIALIZABLE"}
                            )
                            level = await session.scalar(text("SHOW transaction_isolation"))
                            if level != "serializable":
                                unexpected.append(f"isolation {level}")
                            await session.commit()
                        else:
                            level = await session.scalar(text("SHOW transaction_isolation"))
                            if level != "read committed":
                                unexpected.append(f"leaked isolation {level}")

            results = await asyncio.gather(
                *(requests(n) for n in range(TASKS)), return_exceptions=True
            )
            unexpected.extend(repr(r) for r in results if r is not None)
            async with AsyncSession(engine) as session:
                count = await session.scalar(sa.select(sa.func.count()).select_from(Item))
            async with engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
            # invalidation: the backend really goes away, the slot comes back
            async with engine.connect() as conn:
                pid = await conn.scalar(text("SELECT pg_backend_pid()"))
                await conn.invalidate()
            async with engine.connect() as conn:
                if await conn.scalar(text("SELECT pg_backend_pid()")) == pid:
                    unexpected.append("invalidated connection lent again")
            # dispose() with a connection checked out leaves the pool alone
            async with engine.connect() as conn:
                await engine.dispose()
                await conn.scalar(text("SELECT 1"))
            stats = pool.get_stats()
            return unexpected, int(count or 0), stats

    stop = threading.Event()
    values: list[int] = []
    watcher = threading.Thread(target=_peak, args=(pg_server, app_name, stop, values))
    watcher.start()
    try:
        unexpected, count, stats = asyncio.run(asyncio.wait_for(main(), 120))
    finally:
        stop.set()
        watcher.join(10)
    assert unexpected == []
    assert count == 1 + TASKS * 5
    assert max(values) <= MAX
    assert stats["connections_in_use"] == 0
    assert stats["connections_num"] <= MAX + 1  # +1: the invalidated one was replaced
    assert pg_server.wait_count(app_name, 0) == 0
