"""What every workload shares: settings, result tables, the run context and the borrow loop."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopool.bench.monitor import Monitor, ServerAdmin
from psycopool.bench.peers_base import Peer, app_name, dsn_for

RETRY_DELAY = 100e-6  # seconds before retrying a pool that raised "exhausted"
#: A pool that raises "exhausted" for this long while the bench holds none of its
#: connections has lost track of them: the borrow fails (an application error).
EXHAUSTED_GIVE_UP = 10.0


class StuckExhausted(Exception):
    """The pool said "exhausted" for EXHAUSTED_GIVE_UP seconds in a row."""


SLEEP_SQL = "SELECT pg_sleep(0.001)"


@dataclass
class Settings:
    """Sizes for one run; ``quick()`` gives a run of about a minute."""

    iterations: int = 20_000  # single: pairs per peer
    query_iterations: int = 2_000  # query: pairs per peer
    slices: int = 5  # single/query: alternating slices
    warmup: int = 200  # single/query: unmeasured pairs per peer first
    pool_size: int = 4  # single/query/contention/faults: min = max
    threads: tuple[int, ...] = (16, 64)  # contention: thread counts
    ops: int = 100  # contention: operations per thread
    burst: int = 16  # burst: max connections and threads
    rounds: int = 5  # burst: rounds
    burst_sleep: float = 0.05  # burst: seconds each thread holds its connection
    settle: float = 0.5  # burst: seconds to wait before counting what is left
    fault_threads: int = 16  # faults: worker threads
    fault_seconds: float = 4.0  # faults: duration per peer
    kill_interval: float = 0.5  # faults: seconds between terminations
    async_tasks: tuple[int, ...] = (64, 256, 1000)  # async-contention: task counts
    async_ops: int = 4000  # async-contention: operations shared by the tasks
    storm_runs: int = 3  # async-storm: runs (seeds) per peer
    storm_tasks: int = 1000  # async-storm: tasks per run (a third are cancelled)

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            iterations=5_000,
            query_iterations=500,
            ops=30,
            rounds=3,
            settle=0.3,
            fault_seconds=1.6,
            async_ops=1000,
            storm_runs=1,
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["threads"] = list(self.threads)
        data["async_tasks"] = list(self.async_tasks)
        return data


@dataclass
class Column:
    key: str
    header: str
    fmt: str = ".1f"


@dataclass
class Table:
    """One result table: a row of numbers per peer, or the error that stopped the peer."""

    workload: str
    title: str
    params: dict[str, Any]
    columns: list[Column]
    primary: str  # the column the ratio and the plot use
    higher_is_better: bool = False
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: Per peer, the wait-time distribution in ms (percentiles 0..100 in steps of 1), for the
    #: plot: a fair pool and a starving one can share a mean and differ only in their tails.
    distributions: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "title": self.title,
            "params": self.params,
            "primary": self.primary,
            "higher_is_better": self.higher_is_better,
            "columns": [asdict(c) for c in self.columns],
            "rows": self.rows,
            "errors": self.errors,
            "distributions": self.distributions,
        }


@dataclass
class Context:
    dsn: str
    settings: Settings
    admin: ServerAdmin
    monitor: Monitor
    tick: Callable[[str], None]  # advance the progress display by one unit
    stop: threading.Event = field(default_factory=threading.Event)


# -- helpers -----------------------------------------------------------------------------------


def _pct(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Borrower:
    """Borrow through the peer's measured API (get/put or ``with``), retrying "exhausted"."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        #: Set once the pool stayed exhausted for EXHAUSTED_GIVE_UP seconds.
        self.stuck = False

    def acquire(self) -> tuple[Any, Any, int]:
        """(connection, context manager or None, retries)."""
        peer = self.peer
        retries = 0
        give_up = 0.0
        while True:
            try:
                if peer.uses_context:
                    cm = peer.connection()
                    return cm.__enter__(), cm, retries
                return peer.get(), None, retries
            except Exception as exc:
                if peer.raises_when_exhausted and peer.is_exhausted(exc):
                    now = time.monotonic()
                    if not give_up:
                        give_up = now + EXHAUSTED_GIVE_UP
                    elif now > give_up:
                        self.stuck = True
                        raise StuckExhausted(
                            f"still exhausted after {EXHAUSTED_GIVE_UP:g} s of retries"
                        ) from exc
                    retries += 1
                    time.sleep(RETRY_DELAY)
                    continue
                raise

    def release(self, conn: Any, cm: Any, exc: BaseException | None) -> None:
        """Return ``conn``; after an error discard it (close=True or the with-block's exit)."""
        if cm is not None:
            if exc is None:
                cm.__exit__(None, None, None)
            else:
                cm.__exit__(type(exc), exc, exc.__traceback__)
        else:
            self.peer.put(conn, close=exc is not None)


def _run_query(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        cur.fetchone()
    finally:
        cur.close()


def _join_all(threads: Sequence[threading.Thread], stop: threading.Event) -> None:
    """Join, staying responsive to Ctrl-C (which sets ``stop`` for the workers)."""
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    except BaseException:
        stop.set()
        raise


@contextlib.contextmanager
def _opened(
    ctx: Context, peer_cls: type[Peer], min_size: int, max_size: int
) -> Iterator[tuple[Peer, str]]:
    """Open a peer's pool with its application_name; close it and wait for its backends to go."""
    peer = peer_cls()
    app = app_name(peer_cls.key)
    peer.open(dsn_for(ctx.dsn, peer_cls.key), min_size, max_size)
    try:
        yield peer, app
    finally:
        ctx.monitor.forget(app)
        with contextlib.suppress(Exception):
            peer.close()
        ctx.admin.wait_count(app, 0, timeout=3.0)


def _us_row(ns: Sequence[int], cost: int = 0) -> dict[str, float]:
    """The row of ``_columns_us()`` for one peer's samples in ns, less ``cost`` ns each (the
    timing harness's own, so the figures are the pool's)."""
    net = sorted(max(0, t - cost) for t in ns)
    return {
        "mean_us": sum(net) / len(net) / 1000.0,
        "p50_us": _pct(net, 50) / 1000.0,
        "p99_us": _pct(net, 99) / 1000.0,
        "max_us": net[-1] / 1000.0,
        "n": float(len(net)),
    }


def _columns_us() -> list[Column]:
    return [
        Column("mean_us", "mean µs", ".2f"),
        Column("p50_us", "p50 µs", ".2f"),
        Column("p99_us", "p99 µs", ".2f"),
        Column("max_us", "max µs", ".0f"),
    ]


def percentiles_ms(sorted_seconds: Sequence[float]) -> list[float]:
    """Percentiles 0, 1, ..., 100 (nearest rank) of sorted durations in seconds, in ms."""
    if not sorted_seconds:
        return []
    return [1000.0 * _pct(sorted_seconds, q) for q in range(101)]


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    run: Callable[[Context, Sequence[type[Peer]]], list[Table]]
    units: Callable[[Settings, int], int]  # progress units for n peers
    is_async: bool = False  # runs the async peers (bench/peers_async.py), on event loops
