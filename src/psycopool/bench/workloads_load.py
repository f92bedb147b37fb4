"""The ``contention`` and ``burst`` workloads: many threads on few connections, and growth."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from psycopool.bench.harness import (
    SLEEP_SQL,
    Borrower,
    Column,
    Context,
    StuckExhausted,
    Table,
    _error_text,
    _join_all,
    _opened,
    _pct,
    _run_query,
    percentiles_ms,
)
from psycopool.bench.peers_base import Peer, app_name

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
