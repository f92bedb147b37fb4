"""Measure what applications see in a silent network cut and a frozen server (not run in CI).

    sudo PYTHONPATH=src python tools/fault_measure.py [--cut 20] [--freeze 10] [--json out.json]

Builds the same private network as ``tests/test_fault_network.py`` (two network namespaces, a
veth pair, addresses assigned there, a dedicated PostgreSQL inside the server namespace), then
for each pool configuration runs 4 borrower threads on 4 connections in the client namespace
and reports: the first error after the fault and its kind, how long after the fault was lifted
every thread worked again, the longest operation, the server's count against the pool's,
``close()`` during the fault, ``check()`` during the fault and a ``getconn(timeout=3)`` with
``check="ping"`` during the fault. The numbers go in ``docs/failure-modes.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _fault import Worker, outcome, wait_until
from _netns import NetPair, NsServer, frozen, unavailable_reason

from psycopool._network import network_options

CONFIGS: dict[str, dict[str, Any]] = {
    "psycopool psycopg2, default (network_timeout=10)": {
        "impl": "psycopool",
        "driver": "psycopg2",
        "pool": {},
    },
    "psycopool psycopg2, network_timeout=None": {
        "impl": "psycopool",
        "driver": "psycopg2",
        "pool": {"network_timeout": None},
    },
    "psycopool psycopg, default (network_timeout=10)": {
        "impl": "psycopool",
        "driver": "psycopg",
        "pool": {},
    },
    "psycopool psycopg, network_timeout=None": {
        "impl": "psycopool",
        "driver": "psycopg",
        "pool": {"network_timeout": None},
    },
    "psycopg_pool 3.3, defaults": {"impl": "psycopg_pool", "driver": "psycopg", "pool": {}},
    "psycopg_pool 3.3, kwargs = network_options(10)": {
        "impl": "psycopg_pool",
        "driver": "psycopg",
        "pool": {"kwargs": network_options(10)},
    },
}

_apps = iter(range(1, 10**6))


class Admin:
    def __init__(self, socket_dsn: str) -> None:
        import psycopg2

        self.dsn = socket_dsn
        self.conn = psycopg2.connect(socket_dsn)
        self.conn.autocommit = True

    def kill_all(self) -> None:
        self.count("")  # reconnects if a restart ended the admin connection
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name LIKE 'measure-%%' AND backend_type = 'client backend'"
            )

    def count(self, app: str) -> int:
        import psycopg2

        for attempt in (1, 2):
            try:
                if self.conn.closed:
                    self.conn = psycopg2.connect(self.dsn)
                    self.conn.autocommit = True
                with self.conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE application_name = %s AND backend_type = 'client backend'",
                        (app,),
                    )
                    n: int = cur.fetchone()[0]
                return n
            except psycopg2.Error:  # a restart ended the admin connection
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def start(
    dsn: str, config: dict[str, Any], prefix: tuple[str, ...], threads: int = 4, **extra: Any
) -> Any:
    app = f"measure-{next(_apps)}"
    pool = {"min_size": 4, "max_size": 4, "timeout": 3.0, **config["pool"], **extra}
    worker = Worker(
        {
            "impl": config["impl"],
            "driver": config["driver"],
            "conninfo": f"{dsn} application_name={app}",
            "pool": pool,
            "threads": threads,
            "borrow_timeout": 3.0,
            "pause": 0.02,
        },
        prefix=prefix,
    )
    worker.expect("ready", 30)
    return worker, app


def fault_run(
    dsn: str,
    config: dict[str, Any],
    prefix: tuple[str, ...],
    admin: Admin,
    begin: Any,
    end: Any,
    length: float,
) -> dict[str, Any]:
    """Load, fault for ``length`` s, lift, settle, compare counts, close."""
    worker, app = start(dsn, config, prefix)
    try:
        time.sleep(1)
        fault_at = time.monotonic()
        begin()
        try:
            time.sleep(length)
        finally:
            end()
        lifted_at = time.monotonic()
        time.sleep(8)
        seen: list[tuple[int, int]] = []

        def agree() -> bool:
            size = worker.send("stats", "stats", 60)["stats"]["pool_size"]
            seen.append((admin.count(app), size))
            return seen[-1][0] == seen[-1][1]

        agreed_in = time.monotonic()
        agree_ok = wait_until(agree, 30, step=0.5)
        agreed_in = time.monotonic() - agreed_in
        closed = worker.send("close 5", "closed", 120)
    finally:
        worker.kill()
    result = outcome(closed["ops"], fault_at, lifted_at, threads=4, until=closed["t"])
    kinds: dict[str, int] = {}
    for _, name in result.errors:
        kinds[name] = kinds.get(name, 0) + 1
    return {
        "first_error": result.first_error,
        "first_error_kind": result.errors[0][1] if result.errors else None,
        "errors": kinds,
        "recovery": result.recovery,
        "longest_op": result.longest_op,
        "server_vs_pool": seen[-1] if seen else None,
        "counts_agree": agree_ok,
        "agreed_after": agreed_in,
        "close": closed["duration"],
        "ops": len(closed["ops"]),
    }


@contextlib.contextmanager
def fault_for(begin: Any, end: Any, length: float) -> Iterator[None]:
    """The fault for the block, and lifted after ``length`` seconds even if the block hangs
    (an unbounded call then returns when the fault is gone, which is what is measured)."""
    once = threading.Lock()

    def lift() -> None:
        if once.acquire(blocking=False):
            end()

    begin()
    timer = threading.Timer(length, lift)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        lift()
        timer.join()


def during_fault(
    dsn: str,
    config: dict[str, Any],
    prefix: tuple[str, ...],
    begin: Any,
    end: Any,
    length: float,
) -> dict[str, Any]:
    """close(2) while borrowers are stuck in the fault; check() and a ping getconn(3) too."""
    out: dict[str, Any] = {}
    worker, _ = start(dsn, config, prefix)
    try:
        time.sleep(1)
        with fault_for(begin, end, length):
            time.sleep(2)
            closed = worker.send("close 2", "closed", length + 120)
            out["close_during"] = closed["duration"]
            out["still_stuck_2s_after_close"] = closed["stuck"]
    finally:
        worker.kill()
    for command in ("check", "getconn 3"):  # each on a fresh pool, its idle connections unchecked
        worker, _ = start(dsn, config, prefix, check="ping", threads=0)
        try:
            with fault_for(begin, end, length):
                got = worker.send(command, command.split()[0], length + 120)
            key = "check_during" if command == "check" else "ping_getconn3"
            out[key] = got["duration"]
            out[key + "_error"] = got["error"]
            worker.send("close 2", "closed", 120)
        finally:
            worker.kill()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cut", type=float, default=20.0, help="seconds the network is cut")
    parser.add_argument("--freeze", type=float, default=10.0, help="seconds the server is frozen")
    parser.add_argument("--only", default="", help="run configurations whose name has this")
    parser.add_argument("--faults", default="cut,freeze", help="of cut,freeze,kill,restart")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    results: dict[str, Any] = {}
    with NetPair() as net, NsServer(net) as ns_server:
        server = ns_server.server
        admin = Admin(server.socket_dsn)
        cli = net.exec_prefix("cli")
        for name, config in CONFIGS.items():
            if args.only not in name:
                continue
            print(f"== {name}", flush=True)
            results[name] = {}
            holder: list[Any] = []

            def freeze_begin(holder: list[Any] = holder) -> None:
                ctx = frozen(server.data_dir)
                ctx.__enter__()
                holder.append(ctx)

            def freeze_end(holder: list[Any] = holder) -> None:
                holder.pop().__exit__(None, None, None)

            faults = {
                "cut": (net.cut, net.restore, args.cut),
                "freeze": (freeze_begin, freeze_end, args.freeze),
                "kill": (lambda: admin.kill_all(), lambda: None, 0.0),
                "restart": (server.restart, lambda: None, 0.0),
            }
            for fault in args.faults.split(","):
                begin, end, length = faults[fault]
                got = fault_run(server.dsn, config, cli, admin, begin, end, length)
                if fault in ("cut", "freeze"):
                    got.update(during_fault(server.dsn, config, cli, begin, end, length))
                print(f"  {fault}:", json.dumps(got), flush=True)
                results[name][fault] = got
        admin.conn.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
