"""Results: the machine, the rich tables with ratios to psycopool, JSON, and the bar chart."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopool.bench.peers import Peer, all_peers, peer_by_key
from psycopool.bench.workloads import ServerAdmin, Table

__all__ = ["machine_info", "print_tables", "reference_for", "write_json", "write_plot"]

_DISTRIBUTIONS = (
    "psycopool",
    "psycopg2-binary",
    "psycopg2",
    "psycopg",
    "psycopg-binary",
    "psycopg-pool",
    "SQLAlchemy",
    "DBUtils",
    "psycopg2-pool",
    "rich",
    "matplotlib",
)


def machine_info(admin: ServerAdmin) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for dist in _DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "postgresql": admin.server_version(),
        "libraries": versions,
    }
    try:
        import psycopg2.extensions

        info["libpq_psycopg2"] = psycopg2.extensions.libpq_version()
    except ImportError:
        pass
    try:
        import psycopg

        info["libpq_psycopg"] = psycopg.pq.version()
    except ImportError:
        pass
    return info


def reference_for(key: str, present: Sequence[str] | set[str]) -> str | None:
    """The psycopool row a peer's ratio is taken against.

    The modern ``psycopool`` rows when present (``with``-rows against its ``with`` row), else
    the drop-in; psycopg2.pool and psycopg2_pool always against the drop-in, their migration path.
    """
    try:
        cls = peer_by_key(key)
    except KeyError:
        return None
    if cls.is_async:
        if cls.uses_context and "psycopool-async-with" in present:
            return "psycopool-async-with"
        return "psycopool-async" if "psycopool-async" in present else None
    if cls.compares_to_drop_in and "psycopool.pool" in present:
        return "psycopool.pool"
    if cls.uses_context and "psycopool-with" in present:
        return "psycopool-with"
    if "psycopool" in present:
        return "psycopool"
    if "psycopool.pool" in present:
        return "psycopool.pool"
    return None


def ratio(table: Table, key: str) -> tuple[float, str] | None:
    """(value / reference value of the primary column, reference key), when both exist."""
    ref = reference_for(key, set(table.rows))
    if ref is None or key not in table.rows:
        return None
    value = table.rows[key].get(table.primary)
    base = table.rows[ref].get(table.primary)
    if value is None or not base:
        return None
    return value / base, ref


def _label(key: str) -> str:
    try:
        return peer_by_key(key).label
    except KeyError:
        return key


def _ordered(keys: Sequence[str] | set[str]) -> list[str]:
    order = {cls.key: i for i, cls in enumerate(all_peers())}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def print_tables(
    console: Any,
    tables: Sequence[Table],
    info: dict[str, Any],
    skipped: dict[str, str],
) -> None:
    from rich.table import Table as RichTable

    libs = ", ".join(f"{k} {v}" for k, v in info.get("libraries", {}).items())
    console.print(
        f"[bold]Machine[/]: {info.get('cpu_count')} CPUs, {info.get('platform')}, "
        f"Python {info.get('python')}, PostgreSQL {info.get('postgresql')}"
    )
    console.print(f"[bold]Libraries[/]: {libs}")
    for key, reason in skipped.items():
        console.print(f"[yellow]skipped {key}[/]: {reason}")
    for table in tables:
        primary = next((c for c in table.columns if c.key == table.primary), None)
        rt = RichTable(title=table.title, title_justify="left", show_lines=False)
        rt.add_column("pool", no_wrap=True)
        if table.workload in ("contention", "burst", "faults"):
            rt.add_column("on empty")
        for col in table.columns:
            rt.add_column(col.header, justify="right")
        if primary is not None:
            rt.add_column(f"{primary.header} ÷ psycopool", justify="right")
        for key in _ordered(set(table.rows) | set(table.errors)):
            cells = [_label(key)]
            if table.workload in ("contention", "burst", "faults"):
                cells.append(_on_empty(key))
            if key in table.rows:
                row = table.rows[key]
                for col in table.columns:
                    value = row.get(col.key)
                    cells.append("" if value is None else format(value, col.fmt))
                r = ratio(table, key)
                if primary is not None:
                    cells.append("" if r is None else f"{r[0]:.2f}{_ref_mark(r[1])}")
                rt.add_row(*cells)
            else:
                cells.append(f"[red]failed: {table.errors[key]}[/]")
                cells += [""] * (len(table.columns) - 1 + (0 if primary is None else 1))
                rt.add_row(*cells)
        console.print(rt)
    console.print(
        "Ratios: the row's value of the marked column divided by psycopool's "
        "(psycopool.ConnectionPool when present, its `with` row for `with` rows; "
        "† = the psycopool.pool drop-in)."
    )


def _ref_mark(ref: str) -> str:
    return " †" if ref == "psycopool.pool" else ""


def _on_empty(key: str) -> str:
    try:
        cls: type[Peer] = peer_by_key(key)
    except KeyError:
        return ""
    return "raises" if cls.raises_when_exhausted else "waits"


def results_dict(
    tables: Sequence[Table],
    info: dict[str, Any],
    settings: dict[str, Any],
    peers: Sequence[type[Peer]],
    skipped: dict[str, str],
) -> dict[str, Any]:
    workloads: dict[str, list[dict[str, Any]]] = {}
    for table in tables:
        entry = table.as_dict()
        entry["ratios"] = {}
        for key in table.rows:
            r = ratio(table, key)
            if r is not None:
                entry["ratios"][key] = {"ratio": r[0], "reference": r[1]}
        workloads.setdefault(table.workload, []).append(entry)
    return {
        "machine": info,
        "settings": settings,
        "peers": {
            cls.key: {
                "label": cls.label,
                "driver": cls.driver,
                "raises_when_exhausted": cls.raises_when_exhausted,
                "uses_context": cls.uses_context,
            }
            for cls in peers
        },
        "skipped": skipped,
        "workloads": workloads,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_plot(path: Path, tables: Sequence[Table]) -> None:
    """A bar chart of each table's primary column, then, for each table that has them, the
    wait-time distribution of every pool (Agg backend, no display).

    The distribution panel is the one that shows fairness: each pool's box spans its wait
    p25-p75 with the median marked, the whiskers reach p1 and p99, and a dot marks the longest
    wait. A pool that starves some borrowers has a far dot even when its bar looks fine.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in tables if t.rows]
    panels: list[tuple[Table, bool]] = [(t, False) for t in shown]
    panels += [(t, True) for t in shown if any(t.distributions.values())]
    n = max(1, len(panels))
    # Each panel as tall as its longest table (the pools that ran), not the whole registry:
    # the figure's area is what drawing costs.
    rows = max((len(t.rows) for t in shown), default=1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.2 + 0.32 * rows * n), squeeze=False)
    for ax, (table, distribution) in zip(axes[:, 0], panels, strict=True):
        if distribution:
            _plot_distribution(ax, table)
        else:
            _plot_bars(ax, table)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _color(key: str) -> str:
    return "tab:green" if peer_by_key(key).is_psycopool else "tab:gray"


def _plot_bars(ax: Any, table: Table) -> None:
    keys = _ordered(set(table.rows))
    values = [table.rows[k].get(table.primary, 0.0) for k in keys]
    ax.barh([_label(k) for k in keys], values, color=[_color(k) for k in keys])
    ax.invert_yaxis()
    header = next((c.header for c in table.columns if c.key == table.primary), table.primary)
    better = "higher is better" if table.higher_is_better else "lower is better"
    ax.set_title(f"{table.title}\n{header} ({better})", fontsize=8, loc="left")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=7)


def _plot_distribution(ax: Any, table: Table) -> None:
    keys = [k for k in _ordered(set(table.distributions)) if table.distributions[k]]
    floor = 0.001  # ms: a log axis can't show a zero wait
    stats = []
    for key in keys:
        p = [max(floor, v) for v in table.distributions[key]]
        stats.append(
            {
                "label": _label(key),
                "whislo": p[1],
                "q1": p[25],
                "med": p[50],
                "q3": p[75],
                "whishi": p[99],
                "fliers": [p[100]],
            }
        )
    boxes = ax.bxp(stats, orientation="horizontal", showfliers=True, patch_artist=True)
    for patch, key in zip(boxes["boxes"], keys, strict=True):
        patch.set_facecolor(_color(key))
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("wait for a connection, ms (log)", fontsize=7)
    ax.set_title(
        f"{table.title}\nwait distribution: box p25-p75, line median, whiskers p1-p99,"
        " dot the longest wait (shorter and tighter is fairer)",
        fontsize=8,
        loc="left",
    )


def markdown(data: dict[str, Any]) -> str:
    """The results (as :func:`results_dict` builds them, or read back from --json) as Markdown."""
    info = data.get("machine", {})
    peers = data.get("peers", {})
    lines = [
        f"Machine: {info.get('cpu_count')} CPUs, {info.get('platform')}, Python "
        f"{info.get('python')}, PostgreSQL {info.get('postgresql')}; "
        + ", ".join(f"{k} {v}" for k, v in info.get("libraries", {}).items()),
        "",
    ]
    for tables in data.get("workloads", {}).values():
        for table in tables:
            columns = table["columns"]
            primary = next((c for c in columns if c["key"] == table["primary"]), None)
            waits = table["workload"] in ("contention", "burst", "faults")
            header = ["pool"] + (["on empty"] if waits else []) + [c["header"] for c in columns]
            if primary is not None:
                header.append(f"{primary['header']} ÷ psycopool")
            lines += [f"**{table['title']}**", "", "| " + " | ".join(header) + " |"]
            lines.append("|" + "---|" * len(header))
            for key in _ordered(set(table["rows"]) | set(table["errors"])):
                peer = peers.get(key, {})
                cells = [peer.get("label", key)]
                if waits:
                    cells.append("raises" if peer.get("raises_when_exhausted") else "waits")
                row = table["rows"].get(key)
                if row is None:
                    cells.append(f"failed: {table['errors'][key]}")
                    cells += [""] * (len(header) - len(cells))
                else:
                    cells += [format(row[c["key"]], c["fmt"]) for c in columns]
                    if primary is not None:
                        r = table.get("ratios", {}).get(key)
                        cells.append(
                            "" if r is None else f"{r['ratio']:.2f}{_ref_mark(r['reference'])}"
                        )
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    lines.append(
        "Ratios: the marked column divided by psycopool's (psycopool.ConnectionPool, its "
        "`with` row for `with` rows; † = the psycopool.pool drop-in)."
    )
    return "\n".join(lines) + "\n"
