"""The test server handle yielded by the ``pg_server`` fixture (see conftest.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import pytest

if TYPE_CHECKING:
    from psycopool._server import TempServer

ADMIN_APP_NAME = "psycopool-admin"
EXTERNAL_REASON = "the server comes from PSYCOPOOL_TEST_DSN: {what} is not supported there"

_CLIENTS = """
    SELECT pid FROM pg_stat_activity
    WHERE application_name = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'
    ORDER BY pid
"""


def with_app_name(dsn: str, app_name: str) -> str:
    """``dsn`` plus ``application_name`` (a later keyword wins in libpq; URIs are rewritten)."""
    if "://" in dsn:
        return psycopg2.extensions.make_dsn(dsn, application_name=app_name)
    return f"{dsn} application_name={app_name}"


class PgServer:
    """A running PostgreSQL for tests: a :class:`TempServer`, or ``PSYCOPOOL_TEST_DSN``.

    Server-side views count client backends only (``backend_type = 'client backend'``) and never
    the admin connection used to look.
    """

    def __init__(self, dsn: str, server: TempServer | None = None) -> None:
        self._dsn = dsn
        self.server = server
        self._admin: Any = None

    @property
    def dsn(self) -> str:
        return self.server.dsn if self.server is not None else self._dsn

    @property
    def is_external(self) -> bool:
        return self.server is None

    @property
    def is_running(self) -> bool:
        return self.server is None or self.server.is_running

    # -- connections ------------------------------------------------------------------------

    def admin_connect(self) -> Any:
        """A new psycopg2 autocommit connection, application_name 'psycopool-admin'."""
        conn = psycopg2.connect(with_app_name(self.dsn, ADMIN_APP_NAME))
        conn.autocommit = True
        return conn

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run on the shared admin connection, reconnecting once if it died (restart, stop)."""
        for attempt in (1, 2):
            if self._admin is None or self._admin.closed:
                self._admin = self.admin_connect()
            try:
                with self._admin.cursor() as cur:
                    cur.execute(sql, params)
                    rows: list[tuple[Any, ...]] = cur.fetchall()
                    return rows
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._close_admin()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _close_admin(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:
                pass
            self._admin = None

    # -- counting and killing backends ------------------------------------------------------

    def pids(self, application_name: str) -> list[int]:
        """Server pids of the client backends with this application_name."""
        return [row[0] for row in self._query(_CLIENTS, (application_name,))]

    def count(self, application_name: str) -> int:
        """How many client backends the server has with this application_name."""
        return len(self.pids(application_name))

    def wait_count(self, application_name: str, expected: int, timeout: float = 5.0) -> int:
        """Poll until ``count(application_name) == expected`` or ``timeout``; the last count.

        pg_stat_activity lags a little after a client closes (the backend exits asynchronously).
        """
        deadline = time.monotonic() + timeout
        while True:
            n = self.count(application_name)
            if n == expected or time.monotonic() >= deadline:
                return n
            time.sleep(0.01)

    def terminate(self, application_name: str, timeout: float = 5.0) -> int:
        """``pg_terminate_backend`` on those backends, wait until they are gone; how many."""
        rows = self._query(
            f"SELECT pid, pg_terminate_backend(pid) FROM ({_CLIENTS}) AS clients",
            (application_name,),
        )
        killed = [pid for pid, ok in rows if ok]
        deadline = time.monotonic() + timeout
        while killed and time.monotonic() < deadline:
            alive = self._query(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (killed,)
            )[0][0]
            if not alive:
                break
            time.sleep(0.01)
        return len(killed)

    # -- fault injection (throwaway server only) --------------------------------------------

    def _temp(self, what: str) -> TempServer:
        if self.server is None:
            pytest.skip(EXTERNAL_REASON.format(what=what))
        return self.server

    def stop(self) -> None:
        """Stop the server at once (every connection dies); the next test gets it back."""
        server = self._temp("stop()")
        self._close_admin()
        server.stop()

    def start(self) -> None:
        self._temp("start()").start()

    def restart(self) -> None:
        """Immediate stop and start on the same port: every existing connection is dead."""
        server = self._temp("restart()")
        self._close_admin()
        server.restart()

    def ensure_running(self) -> None:
        """Start the throwaway server again if a test stopped it (no-op for an external one)."""
        if self.server is not None and not self.server.is_running:
            self._close_admin()
            self.server.start()

    def close(self) -> None:
        self._close_admin()

    def __repr__(self) -> str:
        return f"<PgServer {self.dsn!r} external={self.is_external}>"
