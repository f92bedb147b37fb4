"""``python -m psycopool bench`` end to end, in-process, with the tiniest sizes.

Checks the shape of the results (every selected peer and workload, numeric fields) and that
--plot writes a PNG; never the timings.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from psycopool.__main__ import main
from psycopool.bench.peers import peer_by_key

pytest.importorskip("rich")
pytest.importorskip("matplotlib")

TINY = [
    "--iterations", "40",
    "--query-iterations", "6",
    "--slices", "2",
    "--warmup", "2",
    "--threads", "3",
    "--ops", "3",
    "--pool-size", "2",
    "--burst", "3",
    "--rounds", "2",
    "--settle", "0",
    "--fault-threads", "3",
    "--fault-seconds", "0.6",
    "--kill-interval", "0.25",
    "--async-tasks", "3",
    "--async-ops", "6",
    "--storm-runs", "1",
    "--storm-tasks", "30",
]  # fmt: skip

WORKLOADS = ("single", "query", "contention", "burst", "faults")
ASYNC_WORKLOADS = ("async-single", "async-query", "async-contention", "async-storm")


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_core_import_does_not_load_the_bench() -> None:
    code = (
        "import sys, psycopool; "
        "bad = [m for m in sys.modules if m.startswith(('psycopool.bench', 'rich', 'matplotlib',"
        " 'sqlalchemy', 'dbutils', 'psycopg_pool', 'psycopg2_pool'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# Every peer through every workload end to end (about 13 peers x 6 tables): ~95 s on a
# 2-core machine at load 14, so pytest's default 120 s is too close. The plot is checked on
# its own, on a small run, below (drawing ~10 panels of 13 rows alone took 25-45 s there).
@pytest.mark.timeout(300)
def test_bench_all_peers_all_workloads(pg_server: Any, tmp_path: Path) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    outputs = ["--json", str(out), "--markdown", str(md)]
    work = ["--workloads", ",".join(WORKLOADS)]
    assert main(["bench", "--dsn", pg_server.dsn, *TINY, *work, *outputs]) == 0

    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["postgresql"]
    ran = set(data["peers"])
    assert ran, "no peer ran"
    assert "psycopool.pool" in ran and "floor-lock" in ran
    # Skipped peers are exactly those whose library is missing, and each says why.
    assert all(isinstance(reason, str) and reason for reason in data["skipped"].values())
    assert not ran & set(data["skipped"])
    ran_sync = {k for k in ran if not peer_by_key(k).is_async}

    assert set(data["workloads"]) == set(WORKLOADS)
    assert len(data["workloads"]["contention"]) == 1
    scenarios = [t["params"]["scenario"] for t in data["workloads"]["faults"]]
    assert scenarios == ["busy", "idle"]
    _check_tables(data, ran_sync, ran)
    assert md.read_text().count("| pool |") == len(WORKLOADS) + 1  # faults: busy and idle


def test_bench_plot_writes_a_png(pg_server: Any, tmp_path: Path) -> None:
    # contention has both kinds of panel: the bars and the wait distribution.
    png = tmp_path / "bench.png"
    args = ["bench", "--dsn", pg_server.dsn, *TINY, "--plot", str(png)]
    code = main([*args, "--peers", "floor-cond,psycopool.pool", "--workloads", "contention"])
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_async_peers_async_workloads(pg_server: Any, tmp_path: Path) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    outputs = ["--json", str(out), "--markdown", str(md)]
    work = ["--workloads", ",".join(ASYNC_WORKLOADS)]
    # psycopool's rows, the floor, and the adapter of another driver (asyncpg).
    peers = ["--peers", "psycopool-async,psycopool-async-with,floor-async,asyncpg"]
    assert main(["bench", "--dsn", pg_server.dsn, *TINY, *work, *peers, *outputs]) == 0
    data = json.loads(out.read_text())
    ran = set(data["peers"])
    ran_async = {k for k in ran if peer_by_key(k).is_async}
    assert "psycopool-async" in ran_async and "floor-async" in ran_async
    assert set(data["workloads"]) == set(ASYNC_WORKLOADS)
    _check_tables(data, ran_async, ran)
    storm = data["workloads"]["async-storm"][0]["rows"]["psycopool-async-with"]
    assert storm["swallowed"] == storm["lost_slots"] == storm["lent_twice"] == 0, storm
    assert md.read_text().count("| pool |") == len(ASYNC_WORKLOADS)


def _check_tables(data: dict[str, Any], expected_rows: set[str], ran: set[str]) -> None:
    for name, tables in data["workloads"].items():
        expected = expected_rows
        if name == "async-storm":  # one row per pool: its `async with` form
            expected = {k for k in expected if f"{k}-with" not in expected}
        for table in tables:
            assert table["workload"] == name
            assert table["errors"] == {}, table["errors"]
            assert set(table["rows"]) == expected, (name, set(table["rows"]) ^ expected)
            for key, row in table["rows"].items():
                for column in table["columns"]:
                    assert _numeric(row[column["key"]]), (name, key, column["key"])
                assert all(_numeric(v) for v in row.values()), (name, key, row)
            for entry in table["ratios"].values():
                assert _numeric(entry["ratio"]) and entry["reference"] in ran


def test_bench_selection(pg_server: Any, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["bench", "--dsn", pg_server.dsn, *TINY, "--json", str(out)]
    code = main([*args, "--peers", "floor-cond,psycopool.pool", "--workloads", "single,burst"])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["peers"]) == {"floor-cond", "psycopool.pool"}
    assert set(data["workloads"]) == {"single", "burst"}
    for tables in data["workloads"].values():
        for table in tables:
            assert set(table["rows"]) == {"floor-cond", "psycopool.pool"}


def test_bench_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--dsn", "host=unused", "--peers", "nope"]) == 2
    assert "unknown peer" in capsys.readouterr().err
    assert main(["bench", "--dsn", "host=unused", "--workloads", "nope"]) == 2
    assert "unknown workload" in capsys.readouterr().err


def test_bench_without_rich_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails
    assert main(["bench", "--dsn", "host=unused"]) == 2
    assert "pip install 'psycopool[bench]'" in capsys.readouterr().err
