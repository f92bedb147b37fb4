"""psycopg 3 behind the :class:`~psycopool._drivers.Driver` interface."""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from typing import Any

from psycopool._drivers._interface import IDLE, Driver, SessionState
from psycopool._drivers._masking import masked_error

try:
    import psycopg
    import psycopg.conninfo
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "psycopool needs psycopg 3 for driver='psycopg': pip install 'psycopool[psycopg]'"
    ) from exc


class PsycopgInspector(Driver):
    """What needs no I/O, shared by psycopg 3's sync and async connections."""

    name = "psycopg"
    Error = psycopg.Error
    OperationalError = psycopg.OperationalError

    def conninfo_options(self, conninfo: str) -> dict[str, str]:
        try:
            options = psycopg.conninfo.conninfo_to_dict(conninfo)
            return {key: str(value) for key, value in options.items() if value is not None}
        except Exception:  # the connect attempt will report it (its message may hold a password)
            return {}

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

    def dsn_parameter(self, conn: Any, name: str) -> str | None:
        value = conn.info.get_parameters().get(name)  # psycopg leaves out the defaults
        return value if isinstance(value, str) else None

    def is_clean(self, conn: Any, state: SessionState) -> bool:
        # The fields behind the public properties, read directly: this runs on
        # every return and the four property calls cost more than the rest of
        # the return. If psycopg renames them, the properties are used instead.
        if conn.pgconn.transaction_status != IDLE:
            return False
        try:
            current = (conn._autocommit, conn._isolation_level, conn._read_only, conn._deferrable)
        except AttributeError:  # pragma: no cover - a future psycopg
            current = self.session_state(conn)
        return current == state


class PsycopgDriver(PsycopgInspector):
    """psycopg 3's (sync) ``Connection``."""

    def __init__(self) -> None:
        self.connection_class: type[Any] = psycopg.Connection

    def close(self, conn: Any) -> None:
        # psycopg's close() frees the libpq connection without its lock: with a borrower
        # still inside a call (close(timeout) gave up on it, after shutting its socket
        # down), wait for that call to fail first. Still stuck: leave it to the garbage
        # collector; the shut socket already ended the session.
        lock = getattr(conn, "lock", None)
        if lock is None or not lock.acquire(timeout=_CLOSE_LOCK_TIMEOUT):
            return
        try:
            conn.close()
        except Exception:
            pass
        finally:
            lock.release()

    def connect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        try:
            conn = self.connection_class.connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            masked = masked_error(exc, conninfo, kwargs)
            if masked is exc:
                raise
            conn = None
        if conn is None:
            raise masked from None  # outside the handler: the original isn't chained
        watch_fatal_notices(conn)
        return conn

    def restore_session(self, conn: Any, state: SessionState, *, session_sql: bool = True) -> None:
        # psycopg 3 keeps these client-side and applies them at BEGIN: nothing is sent.
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
            # Never prepared: psycopg would prepare the pool's own statements after five
            # runs (a prepared DISCARD ALL deallocates itself), and a transaction pooler
            # can't keep prepared statements at all.
            conn.execute(sql, prepare=False)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
        if DROPS_PREPARED(sql):
            # psycopg notices DISCARD ALL only the first time it sees the statement.
            forget_prepared(conn)

    def after_reset(self, conn: Any) -> None:
        names = prepared_names(conn)
        if not names:
            return
        autocommit = conn.autocommit
        conn.autocommit = True  # the connection is IDLE: leave it so
        try:
            cur = conn.execute("SELECT name FROM pg_prepared_statements", prepare=False)
            on_server = {row[0] for row in cur.fetchall()}
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
        if not names <= on_server:
            forget_prepared(conn)


_ENDED = "_psycopool_server_ended"
DROPS_PREPARED = re.compile(r"\s*(DISCARD\s+ALL|DEALLOCATE\s+(PREPARE\s+)?ALL)\b", re.I).match
#: How long close() waits for a call another thread makes on the connection.
_CLOSE_LOCK_TIMEOUT = 1.0


def prepared_names(conn: Any) -> set[str]:
    """The names of the statements psycopg believes it prepared on ``conn``."""
    manager = getattr(conn, "_prepared", None)
    names = getattr(manager, "_names", None) or {}
    return {name.decode() if isinstance(name, bytes) else str(name) for name in names.values()}


def forget_prepared(conn: Any) -> None:
    """Make psycopg forget every statement it prepared: the server already dropped them.

    psycopg has no public call for this; its prepared-statement manager is private. If that
    ever changes shape, fail loudly: the pool then closes the connection rather than lend it.
    """
    manager = conn._prepared
    manager.clear()
    manager._to_flush.clear()  # nothing to DEALLOCATE on the server: it is gone already


def watch_fatal_notices(conn: Any) -> None:
    """Mark ``conn`` when the server announces the end of its session (a FATAL notice)."""
    ref = weakref.ref(conn)

    def record(diag: Any) -> None:
        if diag.severity_nonlocalized == "FATAL":
            target = ref()
            if target is not None:
                setattr(target, _ENDED, True)

    conn.add_notice_handler(record)
