"""``python -m psycopool bench``: psycopool against the other Python PostgreSQL pools.

Needs ``pip install 'psycopool[bench]'``. Not imported by ``import psycopool``.

- :mod:`psycopool.bench.peers`: one small adapter per pool.
- :mod:`psycopool.bench.workloads`: the registry of workloads (each family in ``workloads_*``).
- :mod:`psycopool.bench.harness`: settings, tables and the borrow loop the workloads share.
- :mod:`psycopool.bench.monitor`: the server side (admin connection, connection counter).
- :mod:`psycopool.bench.report`: tables, JSON and the plot.
- :mod:`psycopool.bench.cli`: the command line.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bench with command-line style arguments (without the ``bench`` word)."""
    from psycopool.bench.cli import main as cli_main

    return cli_main(argv)
