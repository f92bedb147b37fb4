"""The ``faults`` workload: the peer's backends terminated under load, busy and idle."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from psycopool.bench.harness import (
    SLEEP_SQL,
    Borrower,
    Column,
    Context,
    Table,
    _error_text,
    _opened,
)
from psycopool.bench.monitor import ServerAdmin
from psycopool.bench.peers_base import Peer
from psycopool.bench.workloads_load import _one_op, _run_threads, _Tally

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
