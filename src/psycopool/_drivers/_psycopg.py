"""psycopg 3 behind the :class:`~psycopool._drivers.Driver` interface."""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from psycopool._drivers import IDLE, Driver, SessionState

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "psycopool needs psycopg 3 for driver='psycopg': pip install 'psycopool[psycopg]'"
    ) from exc


class PsycopgDriver(Driver):
    name = "psycopg"
    Error = psycopg.Error
    OperationalError = psycopg.OperationalError

    def __init__(self) -> None:
        self.connection_class: type[Any] = psycopg.Connection

    def connect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        conn = self.connection_class.connect(conninfo, **kwargs)
        conn.add_notice_handler(_fatal_notice_recorder(conn))
        return conn

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed) or conn.broken

    def fileno(self, conn: Any) -> int:
        return int(conn.pgconn.socket)

    def consume_input(self, conn: Any) -> bool:
        # NOTIFY messages stay queued in libpq: psycopg hands them to the
        # connection's handlers on its next operation. is_busy() makes libpq
        # parse what was read, so a FATAL notice reaches the recorder below.
        pgconn = conn.pgconn
        pgconn.consume_input()
        pgconn.is_busy()
        return bool(getattr(conn, _ENDED, False))

    def transaction_status(self, conn: Any) -> int:
        return int(conn.pgconn.transaction_status)

    def session_state(self, conn: Any) -> SessionState:
        return (conn.autocommit, conn.isolation_level, conn.read_only, conn.deferrable)

    def is_clean(self, conn: Any, state: SessionState) -> bool:
        return (
            conn.pgconn.transaction_status == IDLE
            and (
                conn.autocommit,
                conn.isolation_level,
                conn.read_only,
                conn.deferrable,
            )
            == state
        )

    def restore_session(self, conn: Any, state: SessionState) -> None:
        # psycopg 3 keeps these client-side and applies them at BEGIN.
        autocommit, isolation_level, read_only, deferrable = state
        conn.autocommit = autocommit
        conn.isolation_level = isolation_level
        conn.read_only = read_only
        conn.deferrable = deferrable

    def rollback(self, conn: Any) -> None:
        if conn.pgconn.transaction_status != IDLE:
            if conn.autocommit:
                conn.execute("ROLLBACK")
            else:
                conn.rollback()

    def commit(self, conn: Any) -> None:
        if conn.pgconn.transaction_status != IDLE:
            if conn.autocommit:
                conn.execute("COMMIT")
            else:
                conn.commit()

    def execute_autocommit(self, conn: Any, sql: str) -> None:
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute(sql)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit


_ENDED = "_psycopool_server_ended"


def _fatal_notice_recorder(conn: Any) -> Any:
    """A notice handler marking ``conn`` when the server announces the end of its session."""
    ref = weakref.ref(conn)

    def record(diag: Any) -> None:
        if diag.severity_nonlocalized == "FATAL":
            target = ref()
            if target is not None:
                setattr(target, _ENDED, True)

    return record
