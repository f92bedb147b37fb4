"""The psycopool Django backend: a small project's own test suite, run by ``manage.py test``.

The project (tests/django_project) checks TestCase and TransactionTestCase isolation, atomic
blocks, SQL errors inside them, the request cycle returning connections (close_old_connections,
CONN_MAX_AGE), and 8 threads x 10 requests within the pool's bound, on the real server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg2.extensions
import pytest

pytest.importorskip("django")

PROJECT = Path(__file__).resolve().parent / "django_project"
SRC = Path(__file__).resolve().parent.parent / "src"


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
def test_project_suite_passes(pg_server: Any, app_name: str, driver: str):
    params = psycopg2.extensions.parse_dsn(pg_server.dsn)
    env = dict(os.environ)
    env.update(
        PSYCOPOOL_DJANGO_DRIVER=driver,
        PSYCOPOOL_DJANGO_HOST=params.get("host", "127.0.0.1"),
        PSYCOPOOL_DJANGO_PORT=params.get("port", "5432"),
        PSYCOPOOL_DJANGO_USER=params.get("user", "postgres"),
        PSYCOPOOL_DJANGO_APP_NAME=app_name,
        PSYCOPOOL_DJANGO_NAME=f"psycopool_{driver}_{os.getpid()}",
        PYTHONPATH=os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p),
        DJANGO_SETTINGS_MODULE="settings",
    )
    if "password" in params:
        env["PGPASSWORD"] = params["password"]
    result = subprocess.run(
        [sys.executable, "manage.py", "test", "--noinput", "-v", "2"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Ran 12 tests" in output and "\nOK" in output, output[-4000:]
    # Every connection went back and was closed with the pool before the test database
    # was dropped (DROP DATABASE would have failed otherwise).
    assert pg_server.wait_count(app_name, 0) == 0


def test_import_psycopool_imports_no_integration():
    code = (
        "import sys, psycopool, psycopool.pool; "
        "bad = [m for m in ('django', 'sqlalchemy', 'gunicorn') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
