"""``python -m psycopool bench``: argument parsing and the run itself.

This module imports only the standard library at import time; rich, matplotlib and the peer
libraries are imported when the bench runs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "main", "run"]

INSTALL_HINT = "pip install 'psycopool[bench]'"


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from psycopool.bench.peers import all_peers
    from psycopool.bench.workloads import WORKLOADS

    peer_keys = ", ".join(p.key for p in all_peers())
    work_keys = ", ".join(WORKLOADS)
    parser.add_argument(
        "--dsn",
        help="an existing server (libpq DSN or URI); default: start a throwaway PostgreSQL",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: about a minute")
    parser.add_argument("--peers", type=_names, help=f"comma-separated subset of: {peer_keys}")
    parser.add_argument("--workloads", type=_names, help=f"comma-separated subset of: {work_keys}")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="write a bar chart (PNG)")
    parser.add_argument(
        "--markdown", type=Path, metavar="FILE.md", help="write the tables as Markdown"
    )
    knobs = parser.add_argument_group("sizes (override the defaults or --quick)")
    knobs.add_argument("--iterations", type=int, help="single: borrow+return pairs per peer")
    knobs.add_argument("--query-iterations", type=int, help="query: pairs per peer")
    knobs.add_argument("--slices", type=int, help="single/query: alternating slices")
    knobs.add_argument("--warmup", type=int, help="single/query: unmeasured pairs per peer")
    knobs.add_argument("--threads", type=_int_list, help="contention: thread counts, e.g. 16,64")
    knobs.add_argument("--ops", type=int, help="contention: operations per thread")
    knobs.add_argument("--pool-size", type=int, help="min = max connections (default 4)")
    knobs.add_argument("--burst", type=int, help="burst: max connections and threads")
    knobs.add_argument("--rounds", type=int, help="burst: rounds")
    knobs.add_argument("--settle", type=float, help="burst: seconds before counting leftovers")
    knobs.add_argument("--fault-threads", type=int, help="faults: worker threads")
    knobs.add_argument("--fault-seconds", type=float, help="faults: seconds per peer")
    knobs.add_argument("--kill-interval", type=float, help="faults: seconds between kills")
    knobs.add_argument(
        "--async-tasks", type=_int_list, help="async-contention: task counts, e.g. 64,256,1000"
    )
    knobs.add_argument("--async-ops", type=int, help="async-contention: operations in all")
    knobs.add_argument("--storm-runs", type=int, help="async-storm: runs (seeds) per peer")
    knobs.add_argument("--storm-tasks", type=int, help="async-storm: tasks per run")


_KNOBS = (
    "iterations",
    "query_iterations",
    "slices",
    "warmup",
    "threads",
    "ops",
    "pool_size",
    "burst",
    "rounds",
    "settle",
    "fault_threads",
    "fault_seconds",
    "kill_interval",
    "async_tasks",
    "async_ops",
    "storm_runs",
    "storm_tasks",
)


def _error(message: str) -> int:
    print(f"psycopool bench: error: {message}", file=sys.stderr)
    return 2


@contextlib.contextmanager
def _server(dsn: str | None, console: Any) -> Iterator[str]:
    """The DSN to use: ``dsn``, or a throwaway server cleaned up however the run ends."""
    if dsn:
        yield dsn
        return
    from psycopool._server import TempServer

    console.print("starting a throwaway PostgreSQL ...")
    with TempServer(max_connections=300) as server:
        yield server.dsn


def run(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        return _error(f"the bench needs rich (and more peers): {INSTALL_HINT}")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _error(f"--plot needs matplotlib: {INSTALL_HINT}")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return _error(f"the bench needs psycopg2 (its floors and monitor use it): {INSTALL_HINT}")

    from psycopool.bench import report
    from psycopool.bench.peers import Peer, all_peers
    from psycopool.bench.workloads import (
        WORKLOADS,
        Context,
        Monitor,
        ServerAdmin,
        Settings,
        Table,
    )

    settings = Settings.quick() if args.quick else Settings()
    for knob in _KNOBS:
        value = getattr(args, knob, None)
        if value is not None:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                return _error(f"--{knob.replace('_', '-')} must not be negative")
            setattr(settings, knob, value)

    known = {p.key: p for p in all_peers()}
    wanted_peers = args.peers or [k for k, p in known.items() if not p.opt_in]
    unknown = [k for k in wanted_peers if k not in known]
    if unknown:
        return _error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    wanted_work = args.workloads or list(WORKLOADS)
    unknown = [w for w in wanted_work if w not in WORKLOADS]
    if unknown:
        return _error(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )

    # Not a terminal (a file, CI, tests): wide enough that the tables don't fold.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    peers: list[type[Peer]] = []
    skipped: dict[str, str] = {}
    for key in (p.key for p in all_peers() if p.key in wanted_peers):
        cls = known[key]
        reason = cls.missing()
        if reason is None:
            peers.append(cls)
        else:
            skipped[key] = reason
            console.print(f"[yellow]note[/]: skipping {key}: {reason}")
    if not peers:
        return _error("no peer can run here")

    tables: list[Table] = []
    started = time.monotonic()
    with _server(args.dsn, console) as dsn:
        admin = ServerAdmin(dsn)
        monitor = Monitor(dsn)
        try:
            info = report.machine_info(admin)
            monitor.start()
            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=True) as progress:
                for name in (w for w in WORKLOADS if w in wanted_work):
                    workload = WORKLOADS[name]
                    # Sync workloads run the sync peers, async workloads the async ones.
                    runs = [p for p in peers if p.is_async == workload.is_async]
                    if not runs:
                        continue
                    task = progress.add_task(name, total=workload.units(settings, len(runs)))

                    def tick(description: str, task: Any = task) -> None:
                        progress.update(task, advance=1, description=description)

                    ctx = Context(dsn, settings, admin, monitor, tick)
                    try:
                        tables += workload.run(ctx, runs)
                    except BaseException:
                        ctx.stop.set()
                        raise
                    progress.update(task, description=f"{name}: done")
        finally:
            monitor.stop()
            admin.close()
    info["seconds"] = round(time.monotonic() - started, 1)
    report.print_tables(console, tables, info, skipped)
    console.print(f"total {info['seconds']} s")
    data = report.results_dict(tables, info, settings.as_dict(), peers, skipped)
    if args.json is not None:
        report.write_json(args.json, data)
        console.print(f"wrote {args.json}")
    if args.markdown is not None:
        args.markdown.write_text(report.markdown(data))
        console.print(f"wrote {args.markdown}")
    if args.plot is not None:
        report.write_plot(args.plot, tables)
        console.print(f"wrote {args.plot}")
    failed = sum(len(t.errors) for t in tables)
    if failed:
        console.print(f"[red]{failed} peer run(s) failed; see the tables[/]")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m psycopool.bench`` (the same options as ``python -m psycopool bench``)."""
    parser = argparse.ArgumentParser(prog="psycopool bench", description=__doc__)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
