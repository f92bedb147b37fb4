"""Compare the JUnit results of both targets and classify psycopool's failures.

``python tools/psycopg_pool_suite/summarize.py RESULTS_DIR`` prints the markdown summary that
``run.py`` writes to ``RESULTS_DIR/summary.md``.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

from classification import CATEGORIES, classify


def load(xml: Path) -> dict[str, tuple[str, str]]:
    """test id (``file.py::name[param]``) -> (outcome, message: its first line, then "E" lines)."""
    results: dict[str, tuple[str, str]] = {}
    if not xml.exists():
        return results
    for case in ET.parse(xml).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        test_id = f"{module}.py::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                message = (child.get("message") or "").strip().splitlines()[:1]
                text = (child.text or "").splitlines()
                message = "\n".join(message + [x for x in text if x.startswith("E ")])
                break
            if child.tag == "skipped":
                outcome, message = "skipped", (child.get("message") or "").strip()
        if test_id in results and results[test_id][0] == "passed" and outcome == "error":
            outcome = "error-teardown"  # passed, then its teardown failed
        results[test_id] = (outcome, message)
    return results


def load_target(out: Path, target: str, flaky: list[str]) -> dict[str, tuple[str, str]]:
    """The first run's results, with failures that passed their second try counted as passed."""
    results = load(out / f"{target}.xml")
    for test_id, (outcome, _) in load(out / f"{target}-rerun.xml").items():
        if outcome == "passed" and results.get(test_id, ("",))[0] != "passed":
            results[test_id] = ("passed", "")
            flaky.append(f"{target}: `{test_id}`")
    return results


def pool_class(test_id: str) -> str:
    """The pool class a test exercises: from its file, or its parameter in the common files."""
    for cls in ("AsyncNullConnectionPool", "AsyncConnectionPool", "NullConnectionPool"):
        if f"-{cls}" in test_id or f"[{cls}" in test_id:
            return cls
    if "[" in test_id and "ConnectionPool" in test_id.split("[", 1)[1]:
        return "ConnectionPool"
    name = test_id.split("::")[0]
    return {
        "test_pool.py": "ConnectionPool",
        "test_pool_null.py": "NullConnectionPool",
        "test_pool_async.py": "AsyncConnectionPool",
        "test_pool_null_async.py": "AsyncNullConnectionPool",
    }.get(name, "?")


def summarize(out: Path) -> str:
    flaky: list[str] = []
    base = load_target(out, "psycopg_pool", flaky)
    # Earlier baseline runs (``psycopg_pool-*.xml``, e.g. copied with run.py --baseline): a test
    # psycopg_pool passed in any of them passes (the baseline only flakes on timing).
    for extra in sorted(out.glob("psycopg_pool-*.xml")):
        if extra.name != "psycopg_pool-rerun.xml":
            for test_id, (outcome, message) in load(extra).items():
                if outcome == "passed" or test_id not in base:
                    base[test_id] = base.get(test_id, (outcome, message))
                if outcome == "passed":
                    base[test_id] = (outcome, message)
    ours = load_target(out, "psycopool", flaky)
    lines: list[str] = []
    files = sorted({t.split("::")[0] for t in base} | {t.split("::")[0] for t in ours})
    lines.append("| file | tests | pass on psycopg_pool | of those, pass on psycopool | fail |")
    lines.append("|---|---:|---:|---:|---:|")
    per_cat: dict[str, Counter[str]] = defaultdict(Counter)
    failing: list[tuple[str, str, str, str]] = []
    totals = Counter[str]()
    for f in files:
        ids = [t for t in base if t.startswith(f + "::")] or [
            t for t in ours if t.startswith(f + "::")
        ]
        good = [t for t in ids if base.get(t, ("",))[0] == "passed"]
        ok = [t for t in good if ours.get(t, ("missing",))[0] == "passed"]
        bad = [t for t in good if t not in ok]
        totals.update(tests=len(ids), good=len(good), ok=len(ok), bad=len(bad))
        lines.append(f"| {f} | {len(ids)} | {len(good)} | {len(ok)} | {len(bad)} |")
        for t in bad:
            outcome, message = ours.get(t, ("missing", ""))
            cat, reason = classify(t, message)
            per_cat[f][cat] += 1
            first = message.splitlines()[0][:160] if message else ""
            failing.append((t, cat, reason, f"{outcome}: {first}"))
    lines.append(
        f"| **total** | {totals['tests']} | {totals['good']} | {totals['ok']} | {totals['bad']} |"
    )
    lines.append("")
    lines.append(
        "| class under test | pass on psycopg_pool | of those, pass on psycopool | fail | "
        + " | ".join(CATEGORIES)
        + " |"
    )
    lines.append("|---|---:|---:|---:|" + "---:|" * len(CATEGORIES))
    classes = (
        "ConnectionPool",
        "NullConnectionPool",
        "AsyncConnectionPool",
        "AsyncNullConnectionPool",
    )
    for cls in classes:
        good = [t for t in base if base[t][0] == "passed" and pool_class(t) == cls]
        ok = [t for t in good if ours.get(t, ("",))[0] == "passed"]
        cats = Counter(classify(t, ours.get(t, ("", ""))[1])[0] for t in good if t not in ok)
        lines.append(
            f"| {cls} | {len(good)} | {len(ok)} | {len(good) - len(ok)} | "
            + " | ".join(str(cats[c]) for c in CATEGORIES)
            + " |"
        )
    lines.append("")
    lines.append("| file | " + " | ".join(CATEGORIES) + " |")
    lines.append("|---|" + "---:|" * len(CATEGORIES))
    cat_total = Counter[str]()
    for f in files:
        cat_total.update(per_cat[f])
        lines.append(f"| {f} | " + " | ".join(str(per_cat[f][c]) for c in CATEGORIES) + " |")
    lines.append("| **total** | " + " | ".join(str(cat_total[c]) for c in CATEGORIES) + " |")
    lines.append("")
    lines.append("| test | category | reason | psycopool's failure |")
    lines.append("|---|---|---|---|")
    absent: Counter[str] = Counter()
    for t, cat, reason, got in failing:
        if reason.endswith("does not exist in psycopool yet"):
            absent[f"{t.split('::')[0]}: {reason}"] += 1  # one line per file, below
            continue
        got = got.replace("|", "\\|")
        lines.append(f"| `{t}` | {cat} | {reason} | {got} |")
    for key, count in absent.items():
        where, reason = key.split(": ", 1)
        lines.append(f"| {count} tests of `{where}` | missing | {reason} | AttributeError |")
    only_ours = [t for t in ours if ours[t][0] == "passed" and base.get(t, ("",))[0] != "passed"]
    if only_ours:
        lines.append("")
        lines.append(
            "Pass on psycopool but not on psycopg_pool: " + ", ".join(f"`{t}`" for t in only_ours)
        )
    probe = load(out / "psycopool-probe.xml")
    if probe:
        for test_id, (outcome, _) in load(out / "psycopool-probe-rerun.xml").items():
            if outcome == "passed":
                probe[test_id] = ("passed", "")
        private = [(t, got) for t, cat, _, got in failing if cat == "private"]
        fine = [t for t, _ in private if probe.get(t, ("",))[0] == "passed"]
        lines.append("")
        lines.append(
            f"Probe (read-only `_pool`, `_waiting`, `_nconns` views added; not counted): of the"
            f" {len(private)} `private` failures, {len(fine)} pass, so psycopool behaves as they"
            " expect. The others still fail:"
        )
        lines.append("")
        for t, _ in private:
            if t not in fine:
                outcome, message = probe.get(t, ("missing", ""))
                first = message.splitlines()[0][:200] if message else ""
                lines.append(f"- `{t}`: {outcome}: {first}".replace("|", "\\|"))
    if flaky:
        lines.append("")
        lines.append("Failed, then passed on their second try: " + ", ".join(flaky))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1])))
