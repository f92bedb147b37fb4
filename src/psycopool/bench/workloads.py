"""The workloads: the same parameters for every peer, in one process.

- ``single``: borrow + return, 1 thread, min=max=4: µs per pair, measured in alternating slices
  (every peer runs a slice in turn, the order rotating), so drift hits every peer alike.
- ``query``: borrow + ``SELECT 1`` + fetchone + return, 1 thread, alternating slices.
- ``contention``: T threads on max 4 connections, each N x (borrow, ``SELECT pg_sleep(0.001)``,
  return): throughput, wait-to-get p50/p99/max, first-thread-done, retries, errors, peak server
  connections.
- ``burst``: min 1, max B; B threads each hold a connection through ``pg_sleep(0.05)``, several
  rounds: time per round, peak server connections, connections left once the burst settles.
- ``faults``: the peer's backends are terminated every 0.5 s while 16 threads work: errors that
  reach the application.

Pools that raise "exhausted" instead of waiting are retried after 100 µs; retries are counted.
A monitor thread counts each peer's server connections (``pg_stat_activity`` by
``application_name``) every few milliseconds.

This module is the registry; the shared harness is in ``harness.py`` and ``monitor.py``, each
family in its own ``workloads_*.py``.
"""

from __future__ import annotations

from psycopool.bench.harness import Column, Context, Settings, Table, Workload
from psycopool.bench.monitor import Monitor, ServerAdmin
from psycopool.bench.workloads_async import ASYNC_WORKLOADS
from psycopool.bench.workloads_faults import run_faults
from psycopool.bench.workloads_load import run_burst, run_contention
from psycopool.bench.workloads_single import run_query, run_single

__all__ = [
    "WORKLOADS",
    "Column",
    "Context",
    "Monitor",
    "ServerAdmin",
    "Settings",
    "Table",
    "Workload",
]

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "single",
            "borrow + return, 1 thread (µs per pair)",
            run_single,
            lambda s, n: n * (1 + max(1, s.slices)),
        ),
        Workload(
            "query",
            "borrow + SELECT 1 + return, 1 thread",
            run_query,
            lambda s, n: n * (1 + max(1, s.slices)),
        ),
        Workload(
            "contention",
            "many threads on 4 connections",
            run_contention,
            lambda s, n: n * len(s.threads),
        ),
        Workload("burst", "min 1 max 16 growth in rounds", run_burst, lambda s, n: n),
        Workload(
            "faults",
            "backends terminated under load: busy and idle connections",
            run_faults,
            lambda s, n: 2 * n,
        ),
    )
}

WORKLOADS.update(ASYNC_WORKLOADS)
