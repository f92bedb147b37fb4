"""The :class:`Driver` interface every driver module implements, and libpq's status values."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

# Transaction status, as libpq numbers it (PQTRANS_*): both drivers use these values.
IDLE = 0
ACTIVE = 1
INTRANS = 2
INERROR = 3
UNKNOWN = 4

SessionState = tuple[Any, ...]


class SessionStateError(Exception):
    """A returned connection's session can't be restored without a session-level SET."""


class Driver(abc.ABC):
    """Connect, inspect, clean and close connections of one driver."""

    #: The name users pass as ``driver=``.
    name: str
    #: The driver's base exception class (``psycopg2.Error`` or ``psycopg.Error``).
    Error: type[Exception]
    #: The driver's ``OperationalError``: the modern pool's errors derive from it too.
    OperationalError: type[Exception]
    #: The driver's connection class, to recognise connections passed in.
    connection_class: type[Any]

    @abc.abstractmethod
    def connect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        """Open a new connection."""

    @abc.abstractmethod
    def conninfo_options(self, conninfo: str) -> dict[str, str]:
        """The options a conninfo string or URI sets (libpq's parser); empty if it can't parse."""

    @abc.abstractmethod
    def is_closed(self, conn: Any) -> bool:
        """True if the driver knows the connection is closed or broken."""

    @abc.abstractmethod
    def fileno(self, conn: Any) -> int:
        """The connection's socket, for the liveness check."""

    @abc.abstractmethod
    def consume_input(self, conn: Any) -> bool:
        """Read what the server sent to an idle connection (notices, NOTIFY, EOF).

        Returns True if the server announced the end of the session (a FATAL
        notice: its EOF may not have arrived yet); raises the driver's error
        if the session is already gone.
        """

    @abc.abstractmethod
    def transaction_status(self, conn: Any) -> int:
        """One of IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN."""

    @abc.abstractmethod
    def session_state(self, conn: Any) -> SessionState:
        """Snapshot of the session attributes a borrower may change."""

    @abc.abstractmethod
    def is_clean(self, conn: Any, state: SessionState) -> bool:
        """Open, IDLE, with the session attributes of ``state``: the cheap test on every return."""

    @abc.abstractmethod
    def restore_session(self, conn: Any, state: SessionState, *, session_sql: bool = True) -> None:
        """Put the session attributes back to ``state``; the connection is IDLE.

        With ``session_sql=False`` (behind a transaction pooler) no session-level statement
        is sent: :class:`SessionStateError` if the attributes can't be restored without one.
        """

    @abc.abstractmethod
    def rollback(self, conn: Any) -> None:
        """End any transaction, including an explicit BEGIN in autocommit mode."""

    @abc.abstractmethod
    def commit(self, conn: Any) -> None:
        """Commit any transaction, including an explicit BEGIN in autocommit mode."""

    @abc.abstractmethod
    def execute_autocommit(self, conn: Any, sql: str) -> None:
        """Run one statement outside any transaction (the connection is IDLE), never prepared."""

    def dsn_parameter(self, conn: Any, name: str) -> str | None:
        """The value libpq used for connection parameter ``name`` (None: its default)."""
        return None

    def after_reset(self, conn: Any) -> None:
        """After a reset function ran: make the driver forget what the server just forgot.

        psycopg 3 remembers the statements it prepared; a reset that ran ``DISCARD ALL`` or
        ``DEALLOCATE ALL`` dropped them server-side. psycopg2 prepares nothing: nothing to do.
        """
        return None

    def close(self, conn: Any) -> None:
        """Close the connection; never raises.

        A disconnect needs no classifying of errors here: both drivers mark a
        connection closed (psycopg2) or broken (psycopg) when the server or
        the network ends it, and :meth:`is_closed` reads that.
        """
        try:
            conn.close()
        except Exception:  # a broken connection may fail to close: it is gone anyway
            pass


class AsyncDriver(Driver):
    """A driver whose connections do their I/O with ``await`` (psycopg 3's ``AsyncConnection``).

    It inherits the inspection methods, which need no I/O, and :meth:`close`,
    which must not block (libpq's ``PQfinish`` sends one message and closes
    the socket: what the async driver's own ``close()`` does too). The
    statements run through the ``a``-prefixed methods instead.
    """

    @abc.abstractmethod
    async def aconnect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        """Open a new connection."""

    @abc.abstractmethod
    async def arestore_session(self, conn: Any, state: SessionState) -> None:
        """Put the session attributes back to ``state``; the connection is IDLE."""

    @abc.abstractmethod
    async def arollback(self, conn: Any) -> None:
        """End any transaction, including an explicit BEGIN in autocommit mode."""

    @abc.abstractmethod
    async def acommit(self, conn: Any) -> None:
        """Commit any transaction, including an explicit BEGIN in autocommit mode."""

    @abc.abstractmethod
    async def aexecute_autocommit(self, conn: Any, sql: str) -> None:
        """Run one statement outside any transaction (the connection is IDLE), never prepared."""

    async def aafter_reset(self, conn: Any) -> None:
        """:meth:`Driver.after_reset`, for an async connection."""
        return None

    # The blocking versions make no sense here: calling one is a bug.
    def connect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        raise TypeError(f"{self.name} async driver: use aconnect()")

    def restore_session(self, conn: Any, state: SessionState, *, session_sql: bool = True) -> None:
        raise TypeError(f"{self.name} async driver: use arestore_session()")

    def rollback(self, conn: Any) -> None:
        raise TypeError(f"{self.name} async driver: use arollback()")

    def commit(self, conn: Any) -> None:
        raise TypeError(f"{self.name} async driver: use acommit()")

    def execute_autocommit(self, conn: Any, sql: str) -> None:
        raise TypeError(f"{self.name} async driver: use aexecute_autocommit()")
