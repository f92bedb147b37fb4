"""Run psycopg_pool's own pool tests against psycopg_pool (the baseline) and against psycopool.

One command (see README.md)::

    python tools/psycopg_pool_suite/run.py --psycopg /path/to/psycopg

The psycopg checkout (a work tree, or a bare git directory read with ``git archive``) gives the
tests; they are exported into a temporary folder, never copied into this repository. A
throwaway PostgreSQL is started with ``psycopool._server.TempServer`` unless ``--dsn`` (or
``PSYCOPG_TEST_DSN``) names one. Each target runs in its own pytest process:

- ``psycopg_pool``: the installed psycopg_pool, as is;
- ``psycopool``: the same tests with ``shim/`` first on ``sys.path``, so ``import psycopg_pool``
  gives psycopool's classes with arguments renamed (see ``shim/psycopg_pool/__init__.py``).

The results (JUnit XML per target and a ``summary.md`` comparing them, with the verdicts of
``classification.py``) go to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SHIM = HERE / "shim"

GROUPS = {
    "sync": ["test_pool.py", "test_pool_common.py"],
    "null": ["test_pool_null.py"],
    "async": ["test_pool_async.py", "test_pool_common_async.py", "test_pool_null_async.py"],
}

# psycopg's pyproject.toml runs its suite with warnings as errors; so do we, for both targets.
PYTEST_INI = """\
[pytest]
addopts = -ra
filterwarnings =
    error
"""

PPROXY_WRAPPER = """\
import runpy, sys
from pathlib import Path

sys.modules["uvloop"] = None  # pproxy would install it, then find no event loop
runpy.run_path(str(Path(__file__).with_name("pproxy_fix_orig.py")), run_name="__main__")
"""


def export_tests(source: Path, ref: str, dest: Path) -> None:
    """Copy ``tests/`` and ``tools/pproxy_fix.py`` from a psycopg checkout into ``dest``."""
    wanted = ["tests", "tools/pproxy_fix.py"]
    if (source / "tests" / "pool").is_dir() and ref == "WORKTREE":
        for item in wanted:
            src = source / item
            if src.is_dir():
                shutil.copytree(src, dest / item)
            elif src.exists():
                (dest / item).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / item)
    else:
        archive = subprocess.run(
            [
                "git",
                "--git-dir" if _is_bare(source) else "-C",
                str(source),
                "archive",
                ref,
                *wanted,
            ],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "pytest.ini").write_text(PYTEST_INI)
    # pproxy (the tests' network proxy) calls uvloop.install() when uvloop is importable, and
    # then fails to find an event loop; hide uvloop from the proxy process only.
    fix = dest / "tools" / "pproxy_fix.py"
    if fix.exists():
        fix.rename(fix.with_name("pproxy_fix_orig.py"))
        fix.write_text(PPROXY_WRAPPER)


def _is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def default_ref(source: Path) -> str:
    return "HEAD" if _is_bare(source) or (source / ".git").exists() else "WORKTREE"


#: Failures that a second try can't fix: a missing name, parameter or private module.
DETERMINISTIC = re.compile(
    r"^(E\s+)?(AttributeError|TypeError|ModuleNotFoundError|ImportError)\b", re.MULTILINE
)


def flaky_candidates(xml: Path) -> list[str]:
    """Node ids of the failed tests worth a second try."""
    import xml.etree.ElementTree as ET

    ids = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        for child in case:
            if child.tag in ("failure", "error"):
                text = (child.get("message") or "") + (child.text or "")
                if not DETERMINISTIC.search(text):
                    path = case.get("classname", "").replace(".", "/") + ".py"
                    ids.append(f"{path}::{case.get('name')}")
                break
    return sorted(set(ids))


def run_target(
    target: str,
    root: Path,
    files: list[str],
    dsn: str,
    out: Path,
    extra: list[str],
    rerun_failed: bool = True,
) -> Path:
    xml = out / f"{target}.xml"
    env = dict(os.environ)
    path = [str(root), str(REPO / "src")]
    if target.startswith("psycopool"):
        path.insert(0, str(SHIM))
    if target == "psycopool-probe":
        env["PSYCOPG_POOL_SUITE_PROBE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [*path, env["PYTHONPATH"]] if env.get("PYTHONPATH") else path
    )
    env["PSYCOPG_TEST_DSN"] = dsn
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:randomly",
        "-p",
        "no:asyncio",  # psycopg runs its async tests with anyio; pytest-asyncio would interfere
        "-o",
        f"cache_dir={out / ('.cache-' + target)}",
        "--timeout=120",
        f"--junitxml={xml}",
        *[f"tests/pool/{f}" for f in files],
        *extra,
    ]
    log = out / f"{target}.log"
    print(f"== {target}: {' '.join(argv[3:])}\n   log: {log}", flush=True)
    t0 = time.monotonic()
    with log.open("w") as fh:
        rc = subprocess.run(argv, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
    print(f"   done in {time.monotonic() - t0:.0f} s", flush=True)
    rerun = out / f"{target}-rerun.xml"
    rerun.unlink(missing_ok=True)
    retry = flaky_candidates(xml) if rerun_failed and rc.returncode == 1 else []
    if retry:
        # Timing tests flake on a loaded machine: failures get one more try, alone.
        argv = [a if a != f"--junitxml={xml}" else f"--junitxml={rerun}" for a in argv]
        argv = [a for a in argv if not a.startswith("tests/pool/")] + retry
        print(f"   re-running {len(retry)} failures once", flush=True)
        with (out / f"{target}-rerun.log").open("w") as fh:
            subprocess.run(argv, cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
    return xml


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--psycopg",
        type=Path,
        default=os.environ.get("PSYCOPG_REPO"),
        help="psycopg checkout: a work tree or a (bare) git dir [env PSYCOPG_REPO]",
    )
    parser.add_argument("--ref", default=None, help="git revision to export (default HEAD)")
    parser.add_argument(
        "--target",
        choices=["psycopg_pool", "psycopool", "psycopool-probe", "both"],
        default="both",
        help="which pool the tests run against (default both)",
    )
    parser.add_argument(
        "--group",
        action="append",
        choices=sorted(GROUPS),
        help="test files: sync, null, async (repeatable; default all)",
    )
    parser.add_argument("--dsn", default=os.environ.get("PSYCOPG_TEST_DSN"))
    parser.add_argument("--out", type=Path, default=Path("psycopg_pool_suite-results"))
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a results folder of earlier psycopg_pool runs: its psycopg_pool*.xml are counted"
        " too (a test psycopg_pool passed in any run is in the baseline)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also run psycopool with read-only `_pool`, `_waiting`, `_nconns` views (never"
        " counted as passing): do the tests that fail only on those check correct behaviour?",
    )
    parser.add_argument(
        "--no-rerun", action="store_true", help="don't give failing tests a second try"
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    if args.psycopg is None:
        parser.error("give the psycopg checkout with --psycopg or PSYCOPG_REPO")
    source = args.psycopg.resolve()
    ref = args.ref or default_ref(source)
    files = [f for g in (args.group or ["sync", "null", "async"]) for f in GROUPS[g]]
    targets = ["psycopg_pool", "psycopool"] if args.target == "both" else [args.target]
    if args.probe:
        targets.append("psycopool-probe")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.baseline is not None:
        for n, xml in enumerate(sorted(args.baseline.glob("psycopg_pool*.xml"))):
            shutil.copy2(xml, out / f"psycopg_pool-base{n}.xml")

    sys.path.insert(0, str(REPO / "src"))
    with tempfile.TemporaryDirectory(prefix="psycopg-pool-suite-") as tmp:
        root = Path(tmp)
        export_tests(source, ref, root)
        server = None
        dsn = args.dsn
        if not dsn:
            from psycopool._server import TempServer

            server = TempServer(max_connections=300)
            server.start()
            dsn = server.dsn
        try:
            for target in targets:
                run_target(target, root, files, dsn, out, args.pytest_args, not args.no_rerun)
        finally:
            if server is not None:
                server.cleanup()

    from summarize import summarize  # this folder is on sys.path: it holds the script

    report = summarize(out)
    (out / "summary.md").write_text(report)
    print(report)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
