"""mypy types ``pool.getconn()`` and ``pool.connection()`` as the pool's connection class."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import psycopool

HERE = Path(__file__).parent


def test_pool_is_generic_in_its_connection_class(tmp_path: Path):
    pytest.importorskip("mypy")
    env = dict(os.environ, MYPYPATH=str(Path(psycopool.__file__).parent.parent))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            str(HERE / "typecheck" / "pool_types.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
