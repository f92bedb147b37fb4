"""What the asyncio workloads share: a fresh event loop per run, opening a peer, picking peers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

from psycopool.bench.harness import (
    Context,
)
from psycopool.bench.peers_async import AsyncPeer
from psycopool.bench.peers_base import Peer, app_name, dsn_for

T = TypeVar("T")


def _run(main: Callable[[], Awaitable[T]]) -> T:
    async def wrapped() -> T:
        return await main()

    return asyncio.run(wrapped())


@contextlib.asynccontextmanager
async def _opened(ctx: Context, peer_cls: type[AsyncPeer], size: int) -> AsyncIterator[AsyncPeer]:
    """Open an async peer's pool; close it and wait for its backends to go."""
    peer = peer_cls()
    app = app_name(peer_cls.key)
    await peer.aopen(dsn_for(ctx.dsn, peer_cls.key), size, size)
    try:
        yield peer
    finally:
        ctx.monitor.forget(app)
        with contextlib.suppress(Exception):
            await peer.aclose()
        ctx.admin.wait_count(app, 0, timeout=3.0)


def _async(peers: Sequence[type[Peer]]) -> list[type[AsyncPeer]]:
    return [p for p in peers if issubclass(p, AsyncPeer)]


def _peer(peers: Sequence[type[Peer]], key: str) -> type[Peer]:
    return next(p for p in peers if p.key == key)
