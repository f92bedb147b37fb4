"""Helpers for the asyncio pool tests (test_async_*.py): run on asyncio and on uvloop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

LOOPS = ["asyncio", "uvloop"]


def run_on(loop_kind: str, main: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    """Run ``main()`` on a new event loop of ``loop_kind``, failing after ``timeout`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(main(), timeout)

    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(bounded())
    return asyncio.run(bounded())


@pytest.fixture(params=LOOPS, name="arun")
def arun_fixture(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``arun(main, timeout=30)``: run the coroutine function ``main`` on asyncio, then uvloop."""
    kind = request.param

    def runner(main: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
        return run_on(kind, main, timeout)

    return runner


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (yielding to the loop) until true or ``timeout``; its last truthiness."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return bool(predicate())
        await asyncio.sleep(0.005)
    return True


async def scalar(conn: Any, sql: str) -> Any:
    """The first column of the first row of ``sql``."""
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    return None if row is None else row[0]
