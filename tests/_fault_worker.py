"""A pool under load in its own process, for fault tests (run inside a network namespace).

``python _fault_worker.py '<json config>'`` opens a pool, starts borrower threads that run a
short query in a loop, and answers commands read from stdin, one per line, with one JSON
line each on stdout. Times are ``time.monotonic()`` (the same clock in every process of the
machine), so the test compares them with the moments it cut or froze things.

Config keys: ``impl`` ("psycopool" or "psycopg_pool"), ``driver`` ("psycopg2" or "psycopg"),
``conninfo``, ``pool`` (keyword arguments of the pool), ``threads``, ``borrow_timeout``,
``pause`` (seconds between a thread's operations), ``query``.

Commands: ``stats``; ``check`` (time ``pool.check()``); ``getconn T`` (time one borrow with
timeout T, returned at once); ``stop`` (stop the borrowers); ``close T`` (time
``pool.close(T)``, then report every operation); ``exit``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from typing import Any


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _make_pool(config: dict[str, Any]) -> Any:
    options = dict(config.get("pool", {}))
    if config["impl"] == "psycopool":
        from psycopool import ConnectionPool

        return ConnectionPool(config["conninfo"], driver=config["driver"], **options)
    import psycopg_pool

    if options.pop("check", None) == "ping":
        options["check"] = psycopg_pool.ConnectionPool.check_connection
    return psycopg_pool.ConnectionPool(config["conninfo"], open=True, **options)


def _stats(pool: Any) -> dict[str, int]:
    return dict(pool.get_stats() if hasattr(pool, "get_stats") else pool.stats())


class Borrowers:
    def __init__(self, pool: Any, config: dict[str, Any]) -> None:
        self.pool = pool
        self.config = config
        self.stop = threading.Event()
        self.ops: list[list[Any]] = []  # [thread, start, end, ok, error class, message]
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True)
            for i in range(config.get("threads", 4))
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run(self, index: int) -> None:
        pool, query = self.pool, self.config.get("query", "SELECT 1")
        timeout = self.config.get("borrow_timeout", 2.0)
        pause = self.config.get("pause", 0.05)
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with pool.connection(timeout=timeout) as conn:
                    cur = conn.cursor()
                    cur.execute(query)
                    cur.fetchall()
                    cur.close()
                op = [index, start, time.monotonic(), True, None, None]
            except Exception as exc:
                op = [index, start, time.monotonic(), False, type(exc).__name__, str(exc)[:160]]
            with self.lock:
                self.ops.append(op)
            if not op[3]:
                self.stop.wait(0.05)  # don't spin on errors
            self.stop.wait(pause)


def main() -> None:
    config = json.loads(sys.argv[1])
    pool = _make_pool(config)
    pool.wait(timeout=20)
    borrowers = Borrowers(pool, config)
    borrowers.start()
    _emit(event="ready", t=time.monotonic(), pid=os.getpid())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        command, args = words[0], words[1:]
        started = time.monotonic()
        try:
            if command == "stats":
                _emit(
                    event="stats",
                    t=started,
                    stats=pool.get_stats() if hasattr(pool, "get_stats") else pool.stats(),
                )
            elif command == "check":
                try:
                    pool.check()
                    error = None
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                _emit(event="check", t=started, duration=time.monotonic() - started, error=error)
            elif command == "getconn":
                try:
                    conn = pool.getconn(timeout=float(args[0]))
                    pool.putconn(conn)
                    error = None
                except Exception as exc:
                    error = type(exc).__name__
                _emit(event="getconn", t=started, duration=time.monotonic() - started, error=error)
            elif command == "stop":
                borrowers.stop.set()
                _emit(event="stopped", t=started)
            elif command == "close":
                borrowers.stop.set()
                stats = _stats(pool)
                pool.close(float(args[0]))
                closed = time.monotonic()
                for thread in borrowers.threads:
                    thread.join(max(0.0, 2.0 - (time.monotonic() - closed)))
                with borrowers.lock:
                    ops = list(borrowers.ops)
                _emit(
                    event="closed",
                    t=started,
                    duration=closed - started,
                    ops=ops,
                    stats=stats,
                    stuck=sum(t.is_alive() for t in borrowers.threads),
                )
            elif command == "exit":
                break
            else:
                _emit(event="error", message=f"unknown command {command!r}")
        except Exception:
            _emit(event="error", message=traceback.format_exc())
    sys.stdout.flush()
    os._exit(0)  # borrower threads may still hang in a query on a cut network


if __name__ == "__main__":
    main()
