"""``python -m psycopool``: the command line. Subcommands: ``bench``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="psycopool", description="psycopool: a fast, fair, fault-tolerant PostgreSQL pool."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser(
        "bench",
        help="benchmark psycopool against other Python PostgreSQL pools",
        description=(
            "Benchmark psycopool against the other Python PostgreSQL pools on one server: "
            "single-thread cost, contention, burst growth and faults. Needs "
            "pip install 'psycopool[bench]'."
        ),
    )
    from psycopool.bench.cli import add_arguments, run

    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command != "bench":
        parser.print_help()
        return 2
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
