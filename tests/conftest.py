"""Fixtures for the whole suite: a real PostgreSQL server and per-test connection names.

- ``pg_server`` (session): a :class:`_pg.PgServer`; ``PSYCOPOOL_TEST_DSN`` if set, otherwise a
  throwaway cluster (:class:`psycopool._server.TempServer`). Tests that stop it get it back: it is
  started again before and after every test that uses it.
- ``app_name`` (function): a unique ``application_name`` for this test.
- ``dsn`` (function): ``pg_server.dsn`` plus that ``application_name``, so
  ``pg_server.count(app_name)`` counts exactly this test's connections.
- ``pgbouncer_session``, ``pgbouncer_transaction`` (module): a PgBouncer (``_topology.py``) in
  front of ``pg_server`` in that pooling mode; skipped where pgbouncer is not installed (failed
  instead when ``PSYCOPOOL_REQUIRE_SERVER=1``).

Without any PostgreSQL binaries the tests that need a server are skipped, unless
``PSYCOPOOL_REQUIRE_SERVER=1`` (then they error).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Make the helpers in tests/ importable (``from _pg import PgServer``) in every import mode.
_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from _pg import PgServer, with_app_name  # noqa: E402

_app_counter = itertools.count(1)
_session_token = secrets.token_hex(2)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (see the module docstring)."""
    external = os.environ.get("PSYCOPOOL_TEST_DSN")
    if external:
        handle = PgServer(external)
        try:
            yield handle
        finally:
            handle.close()
        return

    from psycopool._server import PgBinNotFound, TempServer

    server = TempServer()
    try:
        try:
            server.start()
        except PgBinNotFound as exc:
            if os.environ.get("PSYCOPOOL_REQUIRE_SERVER") == "1":
                raise
            pytest.skip(f"no PostgreSQL server for the tests: {exc}")
        handle = PgServer(server.dsn, server)
        try:
            yield handle
        finally:
            handle.close()
    finally:
        server.cleanup()


@pytest.fixture(autouse=True)
def _pg_server_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """Around each test using ``pg_server``: make sure the throwaway server is running."""
    if "pg_server" not in request.fixturenames:
        yield
        return
    handle: PgServer = request.getfixturevalue("pg_server")
    handle.ensure_running()
    yield
    handle.ensure_running()


@pytest.fixture
def app_name(request: pytest.FixtureRequest) -> str:
    """A unique application_name for this test (at most 63 characters, PostgreSQL's limit)."""
    suffix = f"-{_session_token}{next(_app_counter)}"
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name).strip("_") or "test"
    prefix = "psycopool-test-"
    return prefix + name[: 63 - len(prefix) - len(suffix)] + suffix


@pytest.fixture
def dsn(pg_server: PgServer, app_name: str) -> str:
    """``pg_server.dsn`` with this test's ``application_name``."""
    return with_app_name(pg_server.dsn, app_name)


def _bouncer(pg_server: PgServer, mode: str) -> Iterator[Any]:
    from _topology import PgBouncer, require_pgbouncer

    require_pgbouncer()
    if pg_server.server is None:
        pytest.skip("the server comes from PSYCOPOOL_TEST_DSN: no PgBouncer is started for it")
    bouncer = PgBouncer(pg_server.server.port, pool_mode=mode)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.cleanup()


@pytest.fixture(scope="module")
def pgbouncer_session(pg_server: PgServer) -> Iterator[Any]:
    """PgBouncer in session pooling mode in front of the test server."""
    yield from _bouncer(pg_server, "session")


@pytest.fixture(scope="module")
def pgbouncer_transaction(pg_server: PgServer) -> Iterator[Any]:
    """PgBouncer in transaction pooling mode in front of the test server."""
    yield from _bouncer(pg_server, "transaction")
