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
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopool.bench.peers import APP_PREFIX, Peer, app_name, dsn_for

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

RETRY_DELAY = 100e-6  # seconds before retrying a pool that raised "exhausted"
#: A pool that raises "exhausted" for this long while the bench holds none of its
#: connections has lost track of them: the borrow fails (an application error).
EXHAUSTED_GIVE_UP = 10.0


class StuckExhausted(Exception):
    """The pool said "exhausted" for EXHAUSTED_GIVE_UP seconds in a row."""


SLEEP_SQL = "SELECT pg_sleep(0.001)"
ADMIN_APP = "psycopool-admin-bench"  # outside APP_PREFIX: the monitor does not count it

_CLIENTS = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


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


# -- the server side ---------------------------------------------------------------------------


def _connect_admin(dsn: str) -> Any:
    import psycopg2
    from psycopg2.extensions import make_dsn

    conn = psycopg2.connect(make_dsn(dsn, application_name=ADMIN_APP))
    conn.autocommit = True
    return conn


class ServerAdmin:
    """An autocommit admin connection: counts and terminates a peer's backends. Thread-safe."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._lock = threading.Lock()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = _connect_admin(self._dsn)
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(sql, params)
                        rows: list[tuple[Any, ...]] = cur.fetchall()
                        return rows
                except Exception:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def server_version(self) -> str:
        return str(self.query("SHOW server_version")[0][0])

    def max_connections(self) -> int:
        return int(self.query("SHOW max_connections")[0][0])

    def count(self, app: str) -> int:
        return len(self.query(_CLIENTS, (app,)))

    def wait_count(self, app: str, expected: int, timeout: float) -> int:
        """Poll until ``count(app) == expected`` or ``timeout``; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.count(app)
            if n == expected or time.monotonic() >= deadline:
                return n
            time.sleep(0.02)

    def terminate(self, app: str) -> tuple[int, int]:
        """Terminate ``app``'s backends: (how many, how many were running a query)."""
        rows = self.query(
            "SELECT state = 'active', pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            (app,),
        )
        killed = [bool(active) for active, ok in rows if ok]
        return len(killed), sum(killed)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


class Monitor:
    """A thread counting each peer's server connections every ``interval`` s; peaks per peer."""

    def __init__(self, dsn: str, interval: float = 0.005) -> None:
        self._dsn = dsn
        self._interval = interval
        self._cond = threading.Condition()
        self._current: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._generation = 0
        self._wanted = 0  # callers in sync/watch/peak, plus watched peers: poll while > 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        sql = (
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND application_name LIKE %s"
            " GROUP BY application_name"
        )
        conn: Any = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = _connect_admin(self._dsn)
                    with conn.cursor() as cur:
                        cur.execute(sql, (APP_PREFIX + "%",))
                        counts = {name: int(n) for name, n in cur.fetchall()}
                except Exception as exc:  # the server restarting, say: try again
                    self._error = exc
                    conn = None
                    time.sleep(0.05)
                    continue
                with self._cond:
                    self._current = counts
                    for name in self._peaks:
                        self._peaks[name] = max(self._peaks[name], counts.get(name, 0))
                    self._generation += 1
                    self._cond.notify_all()
                    # Idle (no query load on a small machine) while nothing is watched.
                    self._cond.wait_for(lambda: self._wanted > 0 or self._stop.is_set())
                self._stop.wait(self._interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def sync(self, timeout: float = 2.0) -> None:
        """Wait for a sample taken entirely after this call."""
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            try:
                target = self._generation + 2
                self._cond.wait_for(lambda: self._generation >= target, timeout)
            finally:
                self._wanted -= 1

    def watch(self, app: str) -> None:
        """Track ``app``'s peak, from its current count, until :meth:`peak`."""
        with self._cond:
            self._wanted += 1
        self.sync()
        with self._cond:
            self._peaks[app] = self._current.get(app, 0)

    def peak(self, app: str) -> int:
        """``app``'s peak since :meth:`watch`; stops tracking it."""
        self.sync()
        return self.forget(app)

    def forget(self, app: str) -> int:
        """Stop tracking ``app`` (no-op if not tracked); its peak so far."""
        with self._cond:
            peak = self._peaks.pop(app, None)
            if peak is None:
                return 0
            self._wanted -= 1
            return peak


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


def _columns_us() -> list[Column]:
    return [
        Column("mean_us", "mean µs", ".2f"),
        Column("p50_us", "p50 µs", ".2f"),
        Column("p99_us", "p99 µs", ".2f"),
        Column("max_us", "max µs", ".0f"),
    ]


# -- single and query: one thread, alternating slices ------------------------------------------


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
        if harness:
            uses_context = next(type(p).uses_context for p in opened if type(p).key == key)
            cost = harness[uses_context]
            ns = [max(0, t - cost) for t in ns]
        ns.sort()
        table.rows[key] = {
            "mean_us": sum(ns) / len(ns) / 1000.0,
            "p50_us": _pct(ns, 50) / 1000.0,
            "p99_us": _pct(ns, 99) / 1000.0,
            "max_us": ns[-1] / 1000.0,
            "n": float(len(ns)),
        }
    return [table]


def run_single(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    return _sliced(ctx, peers, "single")


def run_query(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    return _sliced(ctx, peers, "query")


# -- contention --------------------------------------------------------------------------------


@dataclass
class _Tally:
    """What one worker thread saw; merged after the run (no shared state while measuring)."""

    waits: list[float] = field(default_factory=list)
    ops: int = 0
    retries: int = 0
    errors: int = 0
    first_error: str = ""
    done_at: float = 0.0

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = _error_text(exc)


def _one_op(borrower: Borrower, tally: _Tally, sql: str) -> None:
    """Borrow (timing the wait), run ``sql``, return; errors are counted, never raised."""
    if borrower.stuck:  # the pool lost its connections: fail fast, don't wait again
        tally.error(StuckExhausted("the pool stayed exhausted"))
        return
    t0 = time.perf_counter()
    try:
        conn, cm, retries = borrower.acquire()
    except Exception as exc:
        tally.error(exc)
        return
    tally.waits.append(time.perf_counter() - t0)
    tally.retries += retries
    failure: BaseException | None = None
    try:
        _run_query(conn, sql)
    except Exception as exc:
        failure = exc
        tally.error(exc)
    try:
        borrower.release(conn, cm, failure)
    except Exception as exc:
        if failure is None:
            tally.error(exc)
    if failure is None:
        tally.ops += 1


def _run_threads(
    n_threads: int,
    body: Callable[[_Tally], None],
    stop: threading.Event,
) -> tuple[list[_Tally], float, float]:
    """Run ``body`` in ``n_threads`` threads started together: (tallies, start, wall seconds)."""
    tallies = [_Tally() for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)
    start = [0.0]

    def worker(tally: _Tally) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            return
        try:
            body(tally)
        finally:
            tally.done_at = time.perf_counter() - start[0]

    threads = [
        threading.Thread(target=worker, args=(t,), name=f"bench-worker-{i}", daemon=True)
        for i, t in enumerate(tallies)
    ]
    for t in threads:
        t.start()
    start[0] = time.perf_counter()
    barrier.wait()
    _join_all(threads, stop)
    wall = time.perf_counter() - start[0]
    return tallies, start[0], wall


def run_contention(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    s = ctx.settings
    tables = []
    for n_threads in s.threads:
        table = Table(
            workload="contention",
            title=(
                f"contention: {n_threads} threads on max {s.pool_size} connections, "
                f"{s.ops} x (borrow, pg_sleep(0.001), return) each"
            ),
            params={"threads": n_threads, "ops_per_thread": s.ops, "pool_size": s.pool_size},
            columns=[
                Column("ops_per_s", "ops/s", ".0f"),
                Column("wall_s", "wall s", ".2f"),
                Column("wait_p50_ms", "wait p50 ms", ".2f"),
                Column("wait_p99_ms", "wait p99 ms", ".1f"),
                Column("wait_max_ms", "wait max ms", ".0f"),
                Column("first_done_s", "first done s", ".2f"),
                Column("retries", "exhausted retries", ".0f"),
                Column("errors", "app errors", ".0f"),
                Column("peak_conns", "peak server conns", ".0f"),
            ],
            primary="ops_per_s",
            higher_is_better=True,
        )
        for peer_cls in peers:
            ctx.tick(f"contention {n_threads} threads: {peer_cls.key}")
            try:
                with _opened(ctx, peer_cls, s.pool_size, s.pool_size) as (peer, app):
                    borrower = Borrower(peer)
                    ctx.monitor.watch(app)

                    def body(tally: _Tally, borrower: Borrower = borrower) -> None:
                        for _ in range(s.ops):
                            if ctx.stop.is_set():
                                return
                            _one_op(borrower, tally, SLEEP_SQL)

                    tallies, _, wall = _run_threads(n_threads, body, ctx.stop)
                    peak = ctx.monitor.peak(app)
            except Exception as exc:
                table.errors[peer_cls.key] = _error_text(exc)
                continue
            waits = sorted(w for t in tallies for w in t.waits)
            ops = sum(t.ops for t in tallies)
            table.rows[peer_cls.key] = {
                "ops_per_s": ops / wall if wall > 0 else 0.0,
                "wall_s": wall,
                "ops": float(ops),
                "wait_mean_ms": 1000.0 * sum(waits) / len(waits) if waits else 0.0,
                "wait_p50_ms": 1000.0 * _pct(waits, 50),
                "wait_p99_ms": 1000.0 * _pct(waits, 99),
                "wait_max_ms": 1000.0 * (waits[-1] if waits else 0.0),
                "first_done_s": min(t.done_at for t in tallies),
                "retries": float(sum(t.retries for t in tallies)),
                "errors": float(sum(t.errors for t in tallies)),
                "peak_conns": float(peak),
            }
            table.distributions[peer_cls.key] = percentiles_ms(waits)
        tables.append(table)
    return tables


def percentiles_ms(sorted_seconds: Sequence[float]) -> list[float]:
    """Percentiles 0, 1, ..., 100 (nearest rank) of sorted durations in seconds, in ms."""
    if not sorted_seconds:
        return []
    return [1000.0 * _pct(sorted_seconds, q) for q in range(101)]


# -- burst -------------------------------------------------------------------------------------


def run_burst(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    s = ctx.settings
    sql = f"SELECT pg_sleep({s.burst_sleep})"
    table = Table(
        workload="burst",
        title=(
            f"burst: min 1 max {s.burst}, {s.burst} threads x (borrow, pg_sleep({s.burst_sleep}),"
            f" return), {s.rounds} rounds"
        ),
        params={
            "min_size": 1,
            "max_size": s.burst,
            "threads": s.burst,
            "rounds": s.rounds,
            "sleep_s": s.burst_sleep,
        },
        columns=[
            Column("round1_ms", "round 1 ms", ".0f"),
            Column("later_mean_ms", "later rounds mean ms", ".0f"),
            Column("peak_conns", "peak server conns", ".0f"),
            Column("conns_after", "conns after settle", ".0f"),
            Column("left_after_close", "left after close", ".0f"),
            Column("retries", "exhausted retries", ".0f"),
            Column("errors", "app errors", ".0f"),
        ],
        primary="later_mean_ms",
    )
    for peer_cls in peers:
        ctx.tick(f"burst: {peer_cls.key}")
        app = app_name(peer_cls.key)
        try:
            with _opened(ctx, peer_cls, 1, s.burst) as (peer, app):
                borrower = Borrower(peer)
                ctx.monitor.watch(app)
                rounds: list[float] = []
                retries = errors = 0

                def body(tally: _Tally, borrower: Borrower = borrower) -> None:
                    _one_op(borrower, tally, sql)

                for _ in range(s.rounds):
                    if ctx.stop.is_set():
                        raise KeyboardInterrupt
                    tallies, _, wall = _run_threads(s.burst, body, ctx.stop)
                    rounds.append(wall * 1000.0)
                    retries += sum(t.retries for t in tallies)
                    errors += sum(t.errors for t in tallies)
                    time.sleep(0.1)
                time.sleep(s.settle)
                after = ctx.admin.count(app)
                peak = ctx.monitor.peak(app)
        except Exception as exc:
            table.errors[peer_cls.key] = _error_text(exc)
            continue
        later = rounds[1:] or rounds
        table.rows[peer_cls.key] = {
            "round1_ms": rounds[0],
            "later_mean_ms": sum(later) / len(later),
            "max_round_ms": max(rounds),
            "peak_conns": float(peak),
            "conns_after": float(after),
            "left_after_close": float(ctx.admin.count(app)),
            "retries": float(retries),
            "errors": float(errors),
        }
    return [table]


# -- faults ------------------------------------------------------------------------------------


#: The idle-kill scenario: few threads that pause between requests, so most of the
#: pool's connections sit idle when the server ends them. A pool that checks
#: connections on checkout hides these kills from the application.
IDLE_FAULT_THREADS = 4
IDLE_FAULT_THINK_S = 0.002


def run_faults(ctx: Context, peers: Sequence[type[Peer]]) -> list[Table]:
    s = ctx.settings
    busy_title = (
        f"faults (busy): {s.fault_threads} threads x (borrow, pg_sleep(0.001), return) on max "
        f"{s.pool_size} for {s.fault_seconds:g} s; the peer's backends terminated every "
        f"{s.kill_interval:g} s: nearly every kill hits a query in flight"
    )
    idle_size = 2 * s.pool_size
    idle_title = (
        f"faults (idle): {IDLE_FAULT_THREADS} threads x (borrow, SELECT 1, return, pause "
        f"{IDLE_FAULT_THINK_S * 1000:g} ms) on max {idle_size} for {s.fault_seconds:g} s; "
        f"backends terminated every {s.kill_interval:g} s: most kills hit idle connections"
    )
    scenarios = (
        ("busy", busy_title, s.fault_threads, s.pool_size, SLEEP_SQL, 0.0),
        ("idle", idle_title, IDLE_FAULT_THREADS, idle_size, "SELECT 1", IDLE_FAULT_THINK_S),
    )
    tables = []
    killer_admin = ServerAdmin(ctx.dsn)
    # The pools log every connection they find dead: expected here, and it garbles the display.
    quiet = [logging.getLogger(name) for name in ("psycopool", "psycopg.pool", "sqlalchemy.pool")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        for scenario, title, threads, size, sql, think in scenarios:
            table = Table(
                workload="faults",
                title=title,
                params={
                    "scenario": scenario,
                    "threads": threads,
                    "pool_size": size,
                    "seconds": s.fault_seconds,
                    "kill_interval_s": s.kill_interval,
                    "think_s": think,
                },
                columns=[
                    Column("ops_per_s", "ops/s", ".0f"),
                    Column("killed", "backends killed", ".0f"),
                    Column("killed_active", "killed mid-query", ".0f"),
                    Column("errors", "app errors", ".0f"),
                    Column("avoidable", "errors beyond mid-query kills", ".0f"),
                    Column("retries", "exhausted retries", ".0f"),
                    Column("peak_conns", "peak server conns", ".0f"),
                    Column("recovered", "works after", ".0f"),
                ],
                primary="errors",
            )
            for peer_cls in peers:
                ctx.tick(f"faults ({scenario}): {peer_cls.key}")
                try:
                    row = _faults_one(
                        ctx,
                        peer_cls,
                        killer_admin,
                        threads=threads,
                        size=size,
                        sql=sql,
                        think=think,
                    )
                except Exception as exc:
                    table.errors[peer_cls.key] = _error_text(exc)
                    continue
                table.rows[peer_cls.key] = row
            tables.append(table)
    finally:
        killer_admin.close()
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
    return tables


def _faults_one(
    ctx: Context,
    peer_cls: type[Peer],
    killer_admin: ServerAdmin,
    *,
    threads: int,
    size: int,
    sql: str,
    think: float,
) -> dict[str, float]:
    s = ctx.settings
    with _opened(ctx, peer_cls, size, size) as (peer, app):
        borrower = Borrower(peer)
        ctx.monitor.watch(app)
        done = threading.Event()
        killed = [0, 0]  # all, mid-query

        def killer() -> None:
            while not done.wait(s.kill_interval):
                with contextlib.suppress(Exception):
                    n, active = killer_admin.terminate(app)
                    killed[0] += n
                    killed[1] += active

        def body(tally: _Tally) -> None:
            while not done.is_set() and not ctx.stop.is_set():
                _one_op(borrower, tally, sql)
                if think:
                    time.sleep(think)

        kill_thread = threading.Thread(target=killer, name="bench-killer", daemon=True)
        timer = threading.Timer(s.fault_seconds, done.set)
        timer.daemon = True
        kill_thread.start()
        timer.start()
        try:
            tallies, _, wall = _run_threads(threads, body, ctx.stop)
        finally:
            done.set()
            timer.cancel()
            kill_thread.join(5)
        peak = ctx.monitor.peak(app)
        # After the faults: does one more borrow + query work? (a retry is allowed: the first
        # borrow may still meet a connection killed at the very end)
        check = _Tally()
        _one_op(borrower, check, "SELECT 1")
        if check.ops == 0:
            _one_op(borrower, check, "SELECT 1")
    errors = sum(t.errors for t in tallies)
    ops = sum(t.ops for t in tallies)
    return {
        "ops": float(ops),
        "ops_per_s": ops / wall if wall > 0 else 0.0,
        "killed": float(killed[0]),
        "killed_active": float(killed[1]),
        "errors": float(errors),
        "avoidable": float(max(0, errors - killed[1])),
        "errors_per_kill": errors / killed[0] if killed[0] else 0.0,
        "retries": float(sum(t.retries for t in tallies)),
        "peak_conns": float(peak),
        "recovered": 1.0 if check.ops else 0.0,
    }


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    summary: str
    run: Callable[[Context, Sequence[type[Peer]]], list[Table]]
    units: Callable[[Settings, int], int]  # progress units for n peers
    is_async: bool = False  # runs the async peers (bench/peers_async.py), on event loops


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

# The asyncio workloads live in their own module, which builds on the names above.
from psycopool.bench.workloads_async import ASYNC_WORKLOADS  # noqa: E402

WORKLOADS.update(ASYNC_WORKLOADS)
