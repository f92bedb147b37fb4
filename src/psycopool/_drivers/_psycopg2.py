"""psycopg2 behind the :class:`~psycopool._drivers.Driver` interface."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from psycopool._drivers._interface import IDLE, Driver, SessionState, SessionStateError
from psycopool._drivers._masking import masked_error

try:
    import psycopg2
    import psycopg2.extensions
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "psycopool needs psycopg2 for this pool: pip install 'psycopool[psycopg2]'"
    ) from exc


class Psycopg2Driver(Driver):
    name = "psycopg2"
    Error = psycopg2.Error
    OperationalError = psycopg2.OperationalError

    def __init__(self) -> None:
        self.connection_class: type[Any] = psycopg2.extensions.connection

    def connect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        if self.connection_class is not psycopg2.extensions.connection:
            kwargs = {"connection_factory": self.connection_class, **kwargs}
        try:
            return psycopg2.connect(conninfo, **kwargs)
        except psycopg2.Error as exc:
            masked = masked_error(exc, conninfo, kwargs)
            if masked is exc:
                raise
        raise masked from None  # outside the handler: the original isn't chained

    def conninfo_options(self, conninfo: str) -> dict[str, str]:
        try:
            return dict(psycopg2.extensions.parse_dsn(conninfo))
        except Exception:  # the connect attempt will report it (its message may hold a password)
            return {}

    def is_closed(self, conn: Any) -> bool:
        return bool(conn.closed)

    def fileno(self, conn: Any) -> int:
        return int(conn.fileno())

    def consume_input(self, conn: Any) -> bool:
        notices = conn.notices
        last = notices[-1] if notices else None
        conn.poll()
        # psycopg2 files a FATAL message received while idle as a notice.
        return bool(notices) and notices[-1] is not last and notices[-1].startswith("FATAL:")

    def transaction_status(self, conn: Any) -> int:
        return int(conn.get_transaction_status())

    def session_state(self, conn: Any) -> SessionState:
        return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)

    def dsn_parameter(self, conn: Any, name: str) -> str | None:
        value = conn.get_dsn_parameters().get(name)
        return value if isinstance(value, str) else None

    def is_clean(self, conn: Any, state: SessionState) -> bool:
        return (
            conn.get_transaction_status() == IDLE
            and (
                conn.autocommit,
                conn.isolation_level,
                conn.readonly,
                conn.deferrable,
            )
            == state
        )

    def restore_session(self, conn: Any, state: SessionState, *, session_sql: bool = True) -> None:
        autocommit, isolation_level, readonly, deferrable = state
        if not session_sql:
            attributes = (conn.isolation_level, conn.readonly, conn.deferrable)
            if (conn.autocommit and attributes != (None, None, None)) or (
                autocommit and state[1:] != (None, None, None)
            ):
                # Behind a transaction pooler a session SET runs on whichever server
                # connection the pooler picks: it can neither be undone nor be sent.
                raise SessionStateError(
                    "its isolation_level/readonly/deferrable were set in autocommit mode,"
                    " which psycopg2 sends as a session SET: behind a transaction pooler"
                    " that SET landed on a server connection other clients share"
                )
        # psycopg2 sends these attributes to the server (SET default_transaction_*) only
        # in autocommit mode, and when it leaves autocommit mode it resets there those it
        # set. So once out of autocommit mode the server holds nothing a borrower set,
        # and the attributes are client-side only (applied at BEGIN): restoring them
        # costs no round trip, e.g. after SQLAlchemy put its isolation level back.
        if conn.autocommit:
            conn.autocommit = False
        conn.isolation_level = isolation_level
        conn.readonly = readonly
        conn.deferrable = deferrable
        if autocommit:
            conn.autocommit = True
            if (isolation_level, readonly, deferrable) != (None, None, None):
                # In autocommit mode they are the session's defaults on the server.
                conn.isolation_level = isolation_level
                conn.readonly = readonly
                conn.deferrable = deferrable

    def rollback(self, conn: Any) -> None:
        if conn.autocommit:
            # psycopg2's rollback() does nothing in autocommit mode, even inside
            # an explicit BEGIN: end the transaction with a statement.
            if conn.get_transaction_status() != IDLE:
                with conn.cursor() as cur:
                    cur.execute("ROLLBACK")
        else:
            conn.rollback()

    def commit(self, conn: Any) -> None:
        if conn.autocommit:
            if conn.get_transaction_status() != IDLE:
                with conn.cursor() as cur:
                    cur.execute("COMMIT")
        else:
            conn.commit()

    def execute_autocommit(self, conn: Any, sql: str) -> None:
        autocommit = conn.autocommit
        conn.autocommit = True  # psycopg2 sends nothing for this: it only skips BEGIN
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
