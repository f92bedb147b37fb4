"""Soak test: a pool under load for minutes while faults land at random (not run in CI).

    sudo PYTHONPATH=src python tools/soak.py --minutes 10 --threads 16 --max-size 8

Builds a private network (two network namespaces joined by a veth pair, see
``tests/_netns.py``), starts a dedicated PostgreSQL in the server namespace, moves this
process's main thread into the client namespace (every thread it starts then lives there), and
runs ``--threads`` borrowers on a ``psycopool.ConnectionPool`` for ``--minutes``. Every
``--every`` seconds on average one fault lands: all the pool's backends killed, the server
restarted (immediate), the network silently cut for 3-15 s, or the server frozen (SIGSTOP)
for 2-8 s. A status line every 10 s; at the end: operations, application-visible errors by
kind, connections opened and closed, and the server-side count against the pool's, then after
``close()`` (which must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _netns import NetPair, NsServer, frozen, unavailable_reason

import psycopool

_CLONE_NEWNET = 0x40000000
APP = "psycopool-soak"


def enter_netns(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name})")
    finally:
        os.close(fd)


class CountingHandler(logging.Handler):
    """Counts the pool's log lines by level instead of printing them (slow-wait lines are many)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


class Admin:
    """Server-side views through the Unix socket (reachable from any namespace)."""

    def __init__(self, socket_dsn: str) -> None:
        self.dsn = socket_dsn
        self.conn: Any = None

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        for attempt in (1, 2):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg2.connect(self.dsn, connect_timeout=5)
                    self.conn.autocommit = True
                with self.conn.cursor() as cur:
                    cur.execute(sql, params)
                    return list(cur.fetchall())
            except psycopg2.Error:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        return []

    def count(self) -> int:
        return int(
            self.query(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND backend_type = 'client backend'",
                APP,
            )[0][0]
        )

    def kill_all(self) -> int:
        rows = self.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND backend_type = 'client backend'",
            APP,
        )
        return len(rows)


class Load:
    def __init__(self, pool: psycopool.ConnectionPool[Any], threads: int) -> None:
        self.pool = pool
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ops = 0
        self.errors: Counter[str] = Counter()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        rng = random.Random()
        while not self.stop.is_set():
            kind = rng.random()
            try:
                with self.pool.connection(timeout=5) as conn:
                    cur = conn.cursor()
                    if kind < 0.6:
                        cur.execute("SELECT 1")
                    elif kind < 0.85:
                        cur.execute("SELECT pg_sleep(0.02), count(*) FROM pg_class")
                    elif kind < 0.95:
                        cur.execute("SET LOCAL statement_timeout = '60s'")
                        cur.execute("SELECT sum(x) FROM generate_series(1, 20000) AS x")
                    else:
                        cur.execute("SET application_name = 'changed-by-borrower'")
                        cur.execute("SELECT 1/0")  # an application error: rolled back
                    cur.fetchall()
                    cur.close()
                error = None
            except Exception as exc:
                error = type(exc).__name__
                if error == "DivisionByZero":
                    error = None  # the application's own error, expected
            with self.lock:
                self.ops += 1
                if error:
                    self.errors[error] += 1
            if error:
                self.stop.wait(0.05)
            self.stop.wait(rng.uniform(0, 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--max-size", type=int, default=8)
    parser.add_argument("--every", type=float, default=20.0, help="mean seconds between faults")
    parser.add_argument("--driver", default="psycopg2", choices=["psycopg2", "psycopg"])
    parser.add_argument("--network-timeout", type=float, default=None, help="(default: pool's)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the summary here")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    rng = random.Random(args.seed)
    log_lines = CountingHandler()
    pool_logger = logging.getLogger("psycopool")
    pool_logger.addHandler(log_lines)
    pool_logger.setLevel(logging.INFO)
    pool_logger.propagate = False
    with NetPair() as net, NsServer(net, settings={"max_connections": "100"}) as ns_server:
        server = ns_server.server
        admin = Admin(server.socket_dsn)
        enter_netns(net.client_ns)
        options: dict[str, Any] = {}
        if args.network_timeout is not None:
            options["network_timeout"] = args.network_timeout
        pool: psycopool.ConnectionPool[Any] = psycopool.ConnectionPool(
            f"{server.dsn} application_name={APP}",
            min_size=args.max_size // 2,
            max_size=args.max_size,
            timeout=5,
            driver=args.driver,
            name="soak",
            **options,
        )
        pool.wait(30)
        load = Load(pool, args.threads)
        for thread in load.threads:
            thread.start()
        started = time.monotonic()
        end = started + args.minutes * 60
        next_fault = started + rng.expovariate(1 / args.every)
        next_status = started + 10
        faults: Counter[str] = Counter()
        log: list[str] = []

        def say(line: str) -> None:
            stamp = f"[{time.monotonic() - started:7.1f}s]"
            print(stamp, line, flush=True)
            log.append(f"{stamp} {line}")

        say(f"soak: {args.threads} threads, max_size={args.max_size}, driver={args.driver},"
            f" network_timeout={pool.network_timeout}, {args.minutes} min")  # fmt: skip
        try:
            while time.monotonic() < end:
                now = time.monotonic()
                if now >= next_status:
                    next_status += 10
                    s = pool.stats()
                    with load.lock:
                        ops, errors = load.ops, dict(load.errors)
                    say(
                        f"ops={ops} errors={errors} size={s['pool_size']}"
                        f" idle={s['pool_available']} waiting={s['requests_waiting']}"
                        f" opened={s['connections_num']} lost={s['connections_lost']}"
                    )
                if now >= next_fault and now < end - 30:  # the last 30 s stay calm
                    fault = rng.choice(["kill", "restart", "cut", "freeze"])
                    faults[fault] += 1
                    if fault == "kill":
                        say(f"FAULT kill: {admin.kill_all()} backends terminated")
                    elif fault == "restart":
                        server.restart()
                        say("FAULT restart: server restarted (immediate)")
                    elif fault == "cut":
                        length = rng.uniform(3, 15)
                        say(f"FAULT cut: network cut for {length:.1f} s")
                        net.cut()
                        try:
                            time.sleep(length)
                        finally:
                            net.restore()
                        say("  network restored")
                    else:
                        length = rng.uniform(2, 8)
                        say(f"FAULT freeze: server frozen for {length:.1f} s")
                        with frozen(server.data_dir):
                            time.sleep(length)
                        say("  server resumed")
                    next_fault = time.monotonic() + rng.expovariate(1 / args.every)
                time.sleep(0.2)
        finally:
            load.stop.set()
            for thread in load.threads:
                thread.join(10)
        # Settle: the server reaps what a cut orphaned (its keepalives), the pool refills.
        agree_deadline = time.monotonic() + 60
        while True:
            server_count, pool_size = admin.count(), pool.stats()["pool_size"]
            if server_count == pool_size or time.monotonic() > agree_deadline:
                break
            time.sleep(0.5)
        stats = pool.stats()
        close_started = time.monotonic()
        pool.close(5)
        close_time = time.monotonic() - close_started
        after_close = admin.count()
        deadline = time.monotonic() + 10
        while after_close and time.monotonic() < deadline:
            time.sleep(0.2)
            after_close = admin.count()
        summary = {
            "minutes": args.minutes,
            "threads": args.threads,
            "max_size": args.max_size,
            "driver": args.driver,
            "network_timeout": pool.network_timeout,
            "faults": dict(faults),
            "operations": load.ops,
            "errors": dict(load.errors),
            "connections_opened": stats["connections_num"],
            "connections_closed": stats["connections_num"] - stats["pool_size"],
            "connections_lost": stats["connections_lost"],
            "server_count_at_end": server_count,
            "pool_size_at_end": pool_size,
            "close_seconds": round(close_time, 3),
            "server_count_after_close": after_close,
            "stuck_threads": sum(t.is_alive() for t in load.threads),
            "pool_log_lines": dict(log_lines.counts),
        }
        say("summary: " + json.dumps(summary))
        if admin.conn is not None:
            admin.conn.close()
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "log": log}, indent=2))


if __name__ == "__main__":
    main()
