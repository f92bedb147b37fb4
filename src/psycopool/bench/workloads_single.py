"""The ``single`` and ``query`` workloads: one thread, alternating slices, net of the harness."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from psycopool.bench.harness import (
    Context,
    Table,
    _columns_us,
    _error_text,
    _opened,
    _run_query,
    _us_row,
)
from psycopool.bench.peers_base import Peer


def _one_thread_pairs(
    peer: Peer, n: int, out: list[int], query: str | None, stop: threading.Event
) -> None:
    clock = time.perf_counter_ns
    append = out.append
    if peer.uses_context:
        connection = peer.connection
        for _ in range(n):
            t0 = clock()
            with connection() as conn:
                if query is not None:
                    _run_query(conn, query)
            append(clock() - t0)
    else:
        get, put = peer.get, peer.put
        for _ in range(n):
            t0 = clock()
            conn = get()
            if query is not None:
                _run_query(conn, query)
            put(conn)
            append(clock() - t0)
    if stop.is_set():
        raise KeyboardInterrupt


class _NullContext:
    """What ``with`` costs by itself: the null peer's context manager."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _NullPeer(Peer):
    """A pool that does nothing, behind the same adapter layer: measures the harness itself."""

    key = "null"

    def get(self) -> Any:
        return None

    def put(self, conn: Any, close: bool = False) -> None:
        if close:
            return

    def connection(self) -> AbstractContextManager[Any]:
        return _NullContext()


class _NullContextPeer(_NullPeer):
    uses_context = True


def _harness_ns(n: int, stop: threading.Event) -> dict[bool, int]:
    """Median ns per pair that the timing loop and the adapter call cost with no pool at all.

    Subtracted from every sample of the single workload, so the figures are the
    pools' own cost and the ratios between pools are not diluted by a constant.
    """
    overhead: dict[bool, int] = {}
    for peer in (_NullPeer(), _NullContextPeer()):
        samples: list[int] = []
        for _ in range(3):
            _one_thread_pairs(peer, max(n, 1000), samples, None, stop)
        samples.sort()
        overhead[peer.uses_context] = samples[len(samples) // 2]
    return overhead


def _sliced(ctx: Context, peers: Sequence[type[Peer]], name: str) -> list[Table]:
    s = ctx.settings
    query = "SELECT 1" if name == "query" else None
    total = s.query_iterations if name == "query" else s.iterations
    slices = max(1, min(s.slices, total))
    if name == "query":
        title = f"query: borrow + SELECT 1 + fetchone + return, 1 thread, min=max={s.pool_size}"
    else:
        title = f"single: borrow + return, 1 thread, min=max={s.pool_size}"
    table = Table(
        workload=name,
        title=title,
        params={"iterations": total, "slices": slices, "pool_size": s.pool_size},
        columns=_columns_us(),
        primary="mean_us",
    )
    with contextlib.ExitStack() as stack:
        opened: list[Peer] = []
        for peer_cls in peers:
            try:
                peer, _ = stack.enter_context(_opened(ctx, peer_cls, s.pool_size, s.pool_size))
                _one_thread_pairs(peer, s.warmup, [], query, ctx.stop)
                opened.append(peer)
            except Exception as exc:
                table.errors[peer_cls.key] = _error_text(exc)
            ctx.tick(f"{name}: opened {peer_cls.key}")
        timings: dict[str, list[int]] = {type(p).key: [] for p in opened}
        failed: set[str] = set()
        for i in range(slices):
            per_slice = total // slices + (1 if i < total % slices else 0)
            order = opened[i % len(opened) :] + opened[: i % len(opened)] if opened else []
            for peer in order:
                key = type(peer).key
                if key not in failed:
                    gc.collect()
                    try:
                        _one_thread_pairs(peer, per_slice, timings[key], query, ctx.stop)
                    except Exception as exc:
                        failed.add(key)
                        table.errors[key] = _error_text(exc)
                ctx.tick(f"{name}: slice {i + 1}/{slices} {key}")
    harness = _harness_ns(s.warmup, ctx.stop) if name == "single" else {}
    if harness:
        table.title += (
            f" (net of the timing harness: {harness[False] / 1000:.2f} µs get/put,"
            f" {harness[True] / 1000:.2f} µs with, measured with a pool that does nothing)"
        )
        table.params["harness_ns"] = {"getput": harness[False], "with": harness[True]}
    for key, ns in timings.items():
        if key in failed or not ns:
            continue
        cost = 0
        if harness:
            uses_context = next(type(p).uses_context for p in opened if type(p).key == key)
            cost = harness[uses_context]
        table.rows[key] = _us_row(ns, cost)
    return [table]


def run_single(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    return _sliced(ctx, peers, "single")


def run_query(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    return _sliced(ctx, peers, "query")
