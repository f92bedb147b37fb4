"""A server that turned read-only under a pool that asked for a writable one.

A managed service demotes a primary by making it read-only (``ALTER SYSTEM SET
default_transaction_read_only = on`` and a reload) before another host takes over. A pool whose
conninfo asks for ``target_session_attrs=read-write`` (or ``primary``) still holds connections
to it, and their writes fail with SQLSTATE 25006 (read_only_sql_transaction). When a
``connection()`` block fails that way, and the server rather than the borrower made the session
read-only (one round trip tells), the pool closes that connection and drains the others: the
new ones go through libpq's ``target_session_attrs`` check again, which picks the writable host.
"""

from __future__ import annotations

from typing import Any

from psycopool._drivers import AsyncDriver, Driver

#: SQLSTATE read_only_sql_transaction.
READ_ONLY_SQL_TRANSACTION = "25006"
_WRITABLE_ATTRS = ("read-write", "primary")
#: True if the session is read-only because of the server: in recovery, or read-only by its
#: configuration (ALTER SYSTEM, postgresql.conf, ALTER DATABASE/ROLE), not by a session SET.
_SERVER_READ_ONLY = (
    "SELECT pg_is_in_recovery() OR (setting = 'on' AND source <> 'session')"
    " FROM pg_settings WHERE name = 'default_transaction_read_only'"
)


def sqlstate(exc: BaseException | None) -> str | None:
    """The SQLSTATE of a driver error (psycopg's ``sqlstate``, psycopg2's ``pgcode``)."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return code if isinstance(code, str) else None


def wants_writable(driver: Driver, conn: Any) -> bool:
    """Did this connection ask libpq for a writable server (``target_session_attrs``)?"""
    return driver.dsn_parameter(conn, "target_session_attrs") in _WRITABLE_ATTRS


def _worth_asking(driver: Driver, conn: Any, exc: BaseException | None) -> bool:
    if sqlstate(exc) != READ_ONLY_SQL_TRANSACTION or driver.is_closed(conn):
        return False
    # session_state()[2] is readonly / read_only: the borrower's own read-only transaction.
    return not driver.session_state(conn)[2] and wants_writable(driver, conn)


def server_turned_read_only(driver: Driver, conn: Any, exc: BaseException | None) -> bool:
    """After a block failed with ``exc`` and was rolled back: should the pool leave this server?

    Only for a 25006 error, on a connection that asked for a writable server, whose borrower
    did not ask for a read-only transaction, and when the server says it is read-only itself.
    Costs one round trip, only in that case; False if the connection can't tell.
    """
    if not _worth_asking(driver, conn, exc):
        return False
    try:
        cur = conn.cursor()
        try:
            cur.execute(_SERVER_READ_ONLY)
            row = cur.fetchone()
        finally:
            cur.close()
        driver.rollback(conn)
    except Exception:
        return False  # broken: putconn discards it anyway
    return bool(row and row[0])


async def aserver_turned_read_only(
    driver: AsyncDriver, conn: Any, exc: BaseException | None
) -> bool:
    """:func:`server_turned_read_only` for an async (psycopg 3) connection."""
    if not _worth_asking(driver, conn, exc):
        return False
    try:
        cur = conn.cursor()
        try:
            await cur.execute(_SERVER_READ_ONLY)
            row = await cur.fetchone()
        finally:
            await cur.close()
        await driver.arollback(conn)
    except Exception:
        return False
    return bool(row and row[0])
