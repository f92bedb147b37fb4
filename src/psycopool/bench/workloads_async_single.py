"""``async-single`` and ``async-query``: one task, alternating slices, net of the harness."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Sequence
from typing import Any

from psycopool.bench.harness import (
    Context,
    Table,
    _columns_us,
    _error_text,
    _us_row,
)
from psycopool.bench.harness_async import _async, _opened, _peer, _run
from psycopool.bench.peers_async import AsyncPeer
from psycopool.bench.peers_base import Peer


async def _pairs(peer: AsyncPeer, n: int, out: list[int], query: str | None) -> None:
    clock = time.perf_counter_ns
    append = out.append
    if peer.uses_context:
        connection = peer.aconnection
        for _ in range(n):
            t0 = clock()
            async with connection() as conn:
                if query is not None:
                    await peer.aquery(conn, query)
            append(clock() - t0)
    else:
        get, put = peer.aget, peer.aput
        for _ in range(n):
            t0 = clock()
            conn = await get()
            if query is not None:
                await peer.aquery(conn, query)
            await put(conn)
            append(clock() - t0)


class _NullCM:
    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _NullAsyncPeer(AsyncPeer):
    """A pool that does nothing, behind the same adapter layer: the harness's own cost."""

    key = "null-async"

    async def aget(self) -> Any:
        return None

    async def aput(self, conn: Any) -> None:
        return None

    def aconnection(self) -> Any:
        return _NullCM()


class _NullAsyncWithPeer(_NullAsyncPeer):
    uses_context = True


async def _harness_ns(n: int) -> dict[bool, int]:
    overhead: dict[bool, int] = {}
    for peer in (_NullAsyncPeer(), _NullAsyncWithPeer()):
        samples: list[int] = []
        for _ in range(3):
            await _pairs(peer, max(n, 1000), samples, None)
        samples.sort()
        overhead[peer.uses_context] = samples[len(samples) // 2]
    return overhead


def _sliced(ctx: Context, peers: Sequence[type[Peer]], name: str) -> list[Table]:
    s = ctx.settings
    query = "SELECT 1" if name == "async-query" else None
    total = s.query_iterations if query else s.iterations
    slices = max(1, min(s.slices, total))
    what = "borrow + SELECT 1 + fetch + return" if query else "borrow + return"
    table = Table(
        workload=name,
        title=f"{name}: {what}, 1 task, min=max={s.pool_size}",
        params={"iterations": total, "slices": slices, "pool_size": s.pool_size},
        columns=_columns_us(),
        primary="mean_us",
    )
    timings: dict[str, list[int]] = {}

    async def main() -> dict[bool, int]:
        async with contextlib.AsyncExitStack() as stack:
            opened: list[AsyncPeer] = []
            for peer_cls in _async(peers):
                try:
                    peer = await stack.enter_async_context(_opened(ctx, peer_cls, s.pool_size))
                    await _pairs(peer, s.warmup, [], query)
                    opened.append(peer)
                    timings[peer_cls.key] = []
                except Exception as exc:
                    table.errors[peer_cls.key] = _error_text(exc)
                ctx.tick(f"{name}: opened {peer_cls.key}")
            for i in range(slices):
                per_slice = total // slices + (1 if i < total % slices else 0)
                k = i % len(opened) if opened else 0
                for peer in opened[k:] + opened[:k]:
                    key = type(peer).key
                    if key not in table.errors:
                        gc.collect()
                        try:
                            await _pairs(peer, per_slice, timings[key], query)
                        except Exception as exc:
                            table.errors[key] = _error_text(exc)
                    ctx.tick(f"{name}: slice {i + 1}/{slices} {key}")
        return await _harness_ns(s.warmup) if query is None else {}

    harness = _run(main)
    if harness:
        table.title += (
            f" (net of the timing harness: {harness[False] / 1000:.2f} µs get/put,"
            f" {harness[True] / 1000:.2f} µs async with)"
        )
        table.params["harness_ns"] = {"getput": harness[False], "with": harness[True]}
    for key, ns in timings.items():
        if key in table.errors or not ns:
            continue
        cost = harness[_peer(peers, key).uses_context] if harness else 0
        table.rows[key] = _us_row(ns, cost)
    return [table]
