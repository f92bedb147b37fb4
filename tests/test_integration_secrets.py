"""No password in what psycopool.sqlalchemy and psycopool.django show, on a real server.

A password the server refuses (a role that must give one: pg_hba.conf gets a line for it), a
password with an unquoted space (libpq refuses the conninfo quoting a fragment of it) and an
unreachable server: the exceptions raised through SQLAlchemy engines (sync and asyncio) and a
Django ``ENGINE: psycopool.django`` database, their chained causes and contexts, the log lines
at DEBUG, and the reprs of the engine, the pools and the Django wrapper never hold the
password. Bad arguments to these layers are refused naming the argument and its value, masked.
Django runs in a subprocess (its settings are global to a process), as in test_django.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa

from psycopool import AsyncConnectionPool, ConnectionPool
from psycopool.sqlalchemy import create_async_engine, create_engine

SRC = Path(__file__).resolve().parent.parent / "src"
#: The password the client gives (the role's real one is another).
SECRET = "s3cr3t-Pa55"
#: A password with an unquoted space: libpq stops at the space and quotes the rest.
SPACED = "Wh0le Fr4gment"
ROLE_PASSWORD = "the-real-0ne"
DRIVERS = {
    # name: (SQLAlchemy URL, ConnectionPool arguments)
    "psycopg2": ("postgresql+psycopg2://", {"driver": "psycopg2", "close_returns": True}),
    "psycopg": ("postgresql+psycopg://", {"driver": "psycopg"}),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _texts(exc: BaseException) -> list[str]:
    return [t for e in _chain(exc) for t in (str(e), repr(e))]


def _assert_hidden(texts: list[str], secret: str) -> None:
    assert texts
    for text in texts:
        for word in secret.split():
            assert word not in text, (word, text)


# -- a role whose password the server checks ---------------------------------------------------


@pytest.fixture(scope="module")
def password_role(pg_server: Any) -> Iterator[tuple[str, str]]:
    """(role, libpq host/port/dbname): the role must give ROLE_PASSWORD (pg_hba "password")."""
    if pg_server.server is None:
        pytest.skip("the server comes from PSYCOPOOL_TEST_DSN: its pg_hba.conf is not ours")
    pg_server.ensure_running()
    role = f"psycopool_pw_{os.getpid()}"
    params = psycopg2.extensions.parse_dsn(pg_server.dsn)
    where = f"host={params['host']} port={params['port']} dbname={params.get('dbname', 'postgres')}"
    hba = pg_server.server.data_dir / "pg_hba.conf"
    original = hba.read_text()
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (ROLE_PASSWORD,))
        # First matching line wins: this role, and only it, must give a password.
        hba.write_text(f"host all {role} all password\nlocal all {role} password\n" + original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while True:  # the postmaster rereads pg_hba.conf asynchronously
            try:
                psycopg2.connect(f"{where} user={role} password=wrong").close()
            except psycopg2.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    break
            assert time.monotonic() < deadline, "pg_hba.conf change not applied"
            time.sleep(0.05)
        yield role, where
    finally:
        hba.write_text(original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
            cur.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def _bad_dsn(kind: str, password_role: tuple[str, str]) -> tuple[str, str, str]:
    """(conninfo, the password in it, a phrase the error must still show)."""
    role, where = password_role
    if kind == "refused":
        return f"{where} user={role} password={SECRET}", SECRET, "password authentication failed"
    # libpq refuses the conninfo before connecting: the server is never reached.
    port = _free_port()
    return f"host=127.0.0.1 port={port} user={role} password={SPACED}", SPACED, 'missing "="'


# -- SQLAlchemy ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["refused", "spaced"])
@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_sqlalchemy_connect_error_hides_password(
    driver: str, kind: str, password_role: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    conninfo, secret, reason = _bad_dsn(kind, password_role)
    url, options = DRIVERS[driver]
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # SQLAlchemy sets WARN on it
    with ConnectionPool(conninfo, min_size=0, max_size=1, timeout=0.3, **options) as pool:
        engine = create_engine(url, pool)
        with pytest.raises(sa.exc.OperationalError) as info:
            with engine.connect():
                pass
        texts = [*_texts(info.value), repr(engine), repr(engine.pool), repr(pool)]
        engine.dispose()
    assert reason in str(info.value)  # the message still says what went wrong
    _assert_hidden(texts, secret)
    assert any(r.name.startswith("sqlalchemy") for r in caplog.records)  # DEBUG lines seen
    _assert_hidden([r.getMessage() for r in caplog.records] + [caplog.text], secret)


@pytest.mark.parametrize("kind", ["refused", "spaced"])
def test_sqlalchemy_async_connect_error_hides_password(
    kind: str, password_role: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("greenlet")
    conninfo, secret, reason = _bad_dsn(kind, password_role)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # SQLAlchemy sets WARN on it

    async def main() -> tuple[BaseException, list[str]]:
        async with AsyncConnectionPool(conninfo, min_size=0, max_size=1, timeout=0.3) as pool:
            engine = create_async_engine("postgresql+psycopg://", pool)
            try:
                async with engine.connect():
                    pass
            except sa.exc.OperationalError as exc:
                error = exc
            else:
                raise AssertionError("connected")
            reprs = [repr(engine), repr(engine.sync_engine), repr(engine.pool), repr(pool)]
            await engine.dispose()
            return error, reprs

    error, reprs = asyncio.run(asyncio.wait_for(main(), 30))
    assert reason in str(error)
    _assert_hidden(_texts(error) + reprs, secret)
    assert any(r.name.startswith("sqlalchemy") for r in caplog.records)
    _assert_hidden([r.getMessage() for r in caplog.records] + [caplog.text], secret)


@pytest.mark.parametrize("function", [create_engine, create_async_engine])
@pytest.mark.parametrize(
    "given",
    [
        f"host=db user=me password={SECRET}",  # a conninfo where the pool goes
        f"postgresql+psycopg://me:{SECRET}@db/app",  # the URL and the pool swapped
    ],
    ids=["conninfo", "url"],
)
def test_sqlalchemy_pool_argument_is_named_and_masked(function: Any, given: str) -> None:
    with pytest.raises(TypeError) as info:
        function("postgresql+psycopg://", given)
    message = str(info.value)
    assert "pool must be a psycopool pool" in message and "***" in message, message
    _assert_hidden(_texts(info.value), SECRET)


@pytest.mark.parametrize("function", [create_engine, create_async_engine])
def test_sqlalchemy_own_options_are_named_with_their_values(function: Any) -> None:
    pool = ConnectionPool("", open=False)
    with pytest.raises(TypeError) as info:
        function("postgresql+psycopg://", pool, creator=f"password={SECRET}", poolclass=None)
    message = str(info.value)
    assert "creator='password=***" in message and "poolclass=None" in message, message
    _assert_hidden(_texts(info.value), SECRET)


# -- Django -----------------------------------------------------------------------------------

#: Run in a subprocess: one Django database per case, each tried once; prints a JSON report.
_DJANGO_SCRIPT = r"""
import json, logging, sys, traceback

config = json.loads(sys.argv[1])
if config["driver"] == "psycopg2":
    sys.modules["psycopg"] = None  # Django's backend uses psycopg 3 when it can import it

records = []

class Keep(logging.Handler):
    def emit(self, record):
        records.append(self.format(record))

handler = Keep(logging.DEBUG)
handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.DEBUG)

import django
from django.conf import settings

settings.configure(
    DATABASES=config["databases"], USE_TZ=True, INSTALLED_APPS=[], LOGGING_CONFIG=None
)
django.setup()
from django.db import connections

def chain(exc):
    seen, todo = [], [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen

report = {}
for alias in config["databases"]:
    records.clear()
    conn = connections[alias]
    texts = [repr(conn)]
    error = None
    try:
        pool = conn.pool
        texts.append(repr(pool))
        conn.ensure_connection()
    except Exception as exc:
        error = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
        for e in chain(exc):
            texts += [str(e), repr(e), "".join(traceback.format_exception(e))]
    finally:
        conn.close()
    report[alias] = {"error": error, "texts": texts, "logs": list(records)}
print("REPORT " + json.dumps(report))
"""

#: Django databases with bad options: (OPTIONS, what the error must name).
_DJANGO_BAD_OPTIONS: dict[str, tuple[dict[str, Any], str]] = {
    "pool_conninfo": ({"pool": f"host=db password={SECRET}"}, "OPTIONS['pool']"),
    "pool_pairs": ({"pool": [("password", SECRET)]}, "OPTIONS['pool']"),
    "pool_kwargs": ({"pool": {"kwargs": {"password": SECRET}}}, "kwargs"),
    "pool_configure": (
        {"pool": {"configure": f"password={SECRET}", "timeout": 0.3}},
        "['configure']",
    ),
    "pool_min_size": ({"pool": {"min_size": f"password={SECRET}"}}, "min_size"),
    "isolation_level": (
        {"pool": True, "isolation_level": f"password={SECRET}"},
        "OPTIONS['isolation_level']",
    ),
}


@pytest.fixture(scope="module")
def django_reports(password_role: tuple[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """{driver: {alias: report}}: both drivers' subprocesses run at the same time."""
    pytest.importorskip("django")
    role, where = password_role
    params = psycopg2.extensions.parse_dsn(where)
    base = {
        "ENGINE": "psycopool.django",
        "NAME": params["dbname"],
        "USER": role,
        "HOST": params["host"],
        "PORT": params["port"],
    }
    pool = {"min_size": 0, "max_size": 1, "timeout": 0.3}
    databases: dict[str, Any] = {
        # Django needs a "default"; it is the refused password through the pool.
        "default": {**base, "PASSWORD": SECRET, "OPTIONS": {"pool": pool}},
        # The same without a pool: the wrapper hands over to Django's own connect.
        "refused_no_pool": {**base, "PASSWORD": SECRET, "OPTIONS": {}},
        "unreachable": {
            **base,
            "PASSWORD": SPACED,
            "PORT": str(_free_port()),
            "OPTIONS": {"pool": pool},
        },
    }
    for alias, (options, _) in _DJANGO_BAD_OPTIONS.items():
        databases[alias] = {**base, "PASSWORD": SECRET, "OPTIONS": options}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    running = {
        driver: subprocess.Popen(
            [
                sys.executable,
                "-c",
                _DJANGO_SCRIPT,
                json.dumps({"driver": driver, "databases": databases}),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for driver in ("psycopg", "psycopg2")
    }
    reports = {}
    for driver, process in running.items():
        try:
            stdout, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        lines = [line for line in stdout.splitlines() if line.startswith("REPORT ")]
        assert process.returncode == 0 and lines, (driver, stdout[-3000:] + stderr[-3000:])
        for word in (*SECRET.split(), *SPACED.split()):  # nothing printed anywhere else either
            assert word not in stderr, (driver, stderr[-3000:])
        reports[driver] = json.loads(lines[-1][len("REPORT ") :])
    return reports


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize(
    ("alias", "secret", "reason"),
    [
        ("default", SECRET, "password authentication failed"),
        ("refused_no_pool", SECRET, "password authentication failed"),
        ("unreachable", SPACED, "Connection refused"),
    ],
    ids=["refused", "refused_no_pool", "unreachable"],
)
def test_django_connect_error_hides_password(
    django_reports: dict[str, dict[str, dict[str, Any]]],
    driver: str,
    alias: str,
    secret: str,
    reason: str,
) -> None:
    case = django_reports[driver][alias]
    assert case["error"] is not None and case["error"].startswith("django.db.utils."), case
    assert reason in case["error"], case["error"]
    _assert_hidden(case["texts"] + case["logs"], secret)


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("alias", sorted(_DJANGO_BAD_OPTIONS))
def test_django_bad_option_is_named_and_masked(
    django_reports: dict[str, dict[str, dict[str, Any]]], driver: str, alias: str
) -> None:
    case = django_reports[driver][alias]
    _, argument = _DJANGO_BAD_OPTIONS[alias]
    error = case["error"]
    assert error is not None and argument in error, (argument, error)
    assert "***" in error, error  # the value is shown, masked
    _assert_hidden(case["texts"] + case["logs"], SECRET)
