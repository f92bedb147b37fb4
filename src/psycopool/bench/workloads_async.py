"""The asyncio workloads: the same parameters for every async peer, each on a fresh event loop.

- ``async-single``: borrow + return (or ``async with``), 1 task, min=max=4: µs per pair, in
  alternating slices, net of the timing harness (measured with a pool that does nothing).
- ``async-query``: borrow + ``SELECT 1`` + fetch + return, 1 task, alternating slices.
- ``async-contention``: T tasks on 4 connections, each (borrow, ``SELECT pg_sleep(0.001)``,
  return) a share of the same total of operations: throughput, wait p50/p99/max, first task
  done, and grants out of arrival order (a FIFO pool has none).
- ``async-storm``: 1,000 tasks on 4 connections, a third cancelled at random moments: cancels
  swallowed (the task went on as if never cancelled), connections lent twice at once, slots
  lost (connections the pool can no longer lend), server connections left after close.

This module is the registry; the shared helpers are in ``harness_async.py``, each family in its
own ``workloads_async_*.py``.
"""

from __future__ import annotations

from psycopool.bench.harness import Settings, Workload
from psycopool.bench.peers_async import ASYNC_PEERS, AsyncPeer
from psycopool.bench.workloads_async_load import run_contention, run_storm
from psycopool.bench.workloads_async_single import _sliced

__all__ = ["ASYNC_WORKLOADS"]


def _units_sliced(s: Settings, n: int) -> int:
    return n * (1 + max(1, s.slices))


ASYNC_WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "async-single",
            "asyncio: borrow + return, 1 task (µs per pair)",
            lambda ctx, peers: _sliced(ctx, peers, "async-single"),
            _units_sliced,
            is_async=True,
        ),
        Workload(
            "async-query",
            "asyncio: borrow + SELECT 1 + return, 1 task",
            lambda ctx, peers: _sliced(ctx, peers, "async-query"),
            _units_sliced,
            is_async=True,
        ),
        Workload(
            "async-contention",
            "asyncio: many tasks on 4 connections",
            run_contention,
            lambda s, n: n * len(s.async_tasks),
            is_async=True,
        ),
        Workload(
            "async-storm",
            "asyncio: 1,000 tasks, a third cancelled at random",
            run_storm,
            lambda s, n: n * s.storm_runs,
            is_async=True,
        ),
    )
}

assert all(issubclass(p, AsyncPeer) for p in ASYNC_PEERS)
