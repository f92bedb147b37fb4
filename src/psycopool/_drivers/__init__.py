"""The only code that imports a database driver.

Everything the pool needs from psycopg2 or psycopg 3 goes through the small
:class:`Driver` interface, so the engine and the front doors never branch on
which driver is in use.
"""

from __future__ import annotations

import abc
import re
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
    def conninfo_keys(self, conninfo: str) -> set[str]:
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


_DRIVER_NAMES = ("psycopg2", "psycopg")


def get_driver(driver: Any) -> Driver:
    """The driver named ``driver`` ("psycopg2", "psycopg"), or the one owning a connection class.

    A connection class (a subclass of ``psycopg2.extensions.connection`` or of
    ``psycopg.Connection``) selects its driver and is used to connect.
    """
    if driver == "psycopg2":
        from psycopool._drivers._psycopg2 import Psycopg2Driver

        return Psycopg2Driver()
    if driver == "psycopg":
        from psycopool._drivers._psycopg import PsycopgDriver

        return PsycopgDriver()
    if isinstance(driver, type):
        for name in _DRIVER_NAMES:
            if not any(base.__module__.split(".")[0] == name for base in driver.__mro__):
                continue
            found = get_driver(name)
            if issubclass(driver, found.connection_class):
                found.connection_class = driver
                return found
    raise ValueError(
        f"driver must be one of {', '.join(map(repr, _DRIVER_NAMES))} or a connection class"
        f" of one of them; got {hide_password(repr(driver))}"
    )


def get_async_driver(driver: Any) -> AsyncDriver:
    """The async driver: "psycopg", or a subclass of ``psycopg.AsyncConnection`` to connect with.

    A parametrised generic (``MyConnection[MyRow]``) is accepted: checked as its origin
    class, and kept as given to connect with.
    """
    import typing

    cls = typing.get_origin(driver) or driver
    if driver == "psycopg" or isinstance(cls, type):
        from psycopool._drivers._psycopg_async import AsyncPsycopgDriver

        found = AsyncPsycopgDriver()
        if driver == "psycopg":
            return found
        if issubclass(cls, found.connection_class):
            found.connection_class = driver
            return found
    raise ValueError(
        "connection_class must be psycopg.AsyncConnection or a subclass of it; driver must be"
        f" 'psycopg'; got {hide_password(repr(driver))}"
    )


# libpq's connection keywords: an unquoted password with a space (which libpq
# rejects) is masked up to the next of them, so no fragment of it shows.
_KEYWORDS = (
    "host|hostaddr|port|dbname|user|password|passfile|require_auth|channel_binding"
    "|connect_timeout|client_encoding|options|application_name|fallback_application_name"
    "|keepalives|keepalives_idle|keepalives_interval|keepalives_count|tcp_user_timeout"
    "|replication|gssencmode|sslmode|sslnegotiation|requiressl|sslcompression|sslcert"
    "|sslkey|sslcertmode|sslpassword|sslrootcert|sslcrl|sslcrldir|sslsni|requirepeer"
    "|ssl_min_protocol_version|ssl_max_protocol_version|min_protocol_version"
    "|max_protocol_version|krbsrvname|gsslib|gssdelegation|service|target_session_attrs"
    "|load_balance_hosts|dsn"
)
_SECRET_KEY = r"(?<![A-Za-z0-9_])(?:ssl)?password"
_PASSWORD_RE = re.compile(
    # conninfo: password=value, value quoted (maybe unterminated), or unquoted up
    # to the next keyword (libpq stops at a space, and then quotes the rest).
    rf"""({_SECRET_KEY}\s*=\s*)('(?:[^'\\]|\\.)*(?:'|$)|\S+(?:\s+(?!(?:{_KEYWORDS})\s*=)\S+)*)"""
    # a URL's user:password@
    r"""|(://[^:/@\s]*:)([^@\n]*)(@)"""
    # a repr of a mapping or pairs: 'password': 'x' or ('password', 'x')
    rf"""|((['"]){_SECRET_KEY}\7\s*[:,]\s*)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,)}}\]\s]+)""",
    re.IGNORECASE,
)


def hide_password(text: str) -> str:
    """Mask passwords in a conninfo string, a URL, a repr, or an error message built from one."""

    def mask(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"{match.group(1)}***"
        if match.group(3) is not None:
            return f"{match.group(3)}***{match.group(5)}"
        return f"{match.group(6)}***"

    return _PASSWORD_RE.sub(mask, text)


_QUOTED_RE = re.compile(r'"([^"]*)"')
_URL_PASSWORD_RE = re.compile(r"://[^:/@\s]*:([^@]*)@")


def _secrets(conninfo: Any, kwargs: Mapping[str, Any]) -> list[str]:
    """The passwords in a conninfo string (as the user wrote them) and in keyword arguments."""
    found = [str(v) for k, v in kwargs.items() if k in ("password", "sslpassword") and v]
    if isinstance(conninfo, str):
        for match in _PASSWORD_RE.finditer(conninfo):
            value = match.group(2) or match.group(4) or ""
            found.append(value.strip("'"))
        found.extend(m.group(1) for m in _URL_PASSWORD_RE.finditer(conninfo))
    return [s for s in found if s]


def masked_error(exc: BaseException, conninfo: Any, kwargs: Mapping[str, Any]) -> BaseException:
    """``exc`` from a connect attempt, or a copy of it with no fragment of a password.

    libpq's "invalid dsn" errors quote the fragment they could not parse,
    which may be part of a password (``password=se cret``: "cret"). Such a
    fragment, and anything :func:`hide_password` finds, is masked. A copy
    keeps the exception's class; the original is not chained (it holds the
    fragment).
    """
    text = str(exc)
    secrets = _secrets(conninfo, kwargs)
    words = {w for s in secrets for w in s.split() if len(w) >= 2}

    def quoted(match: re.Match[str]) -> str:
        fragment = match.group(1)
        if fragment and (
            any(fragment in s or s in fragment for s in secrets)
            or any(w in fragment for w in words)
        ):
            return '"***"'
        return match.group(0)

    masked = hide_password(_QUOTED_RE.sub(quoted, text) if secrets else text)
    if masked == text:
        return exc
    try:
        copy = type(exc)(masked)
    except Exception:  # a class with another signature: keep it, change its message
        copy = exc
        copy.args = (masked,)
    return copy
