"""psycopg 3's ``AsyncConnection`` behind the :class:`~psycopool._drivers.AsyncDriver` interface.

The inspection methods (no I/O) are shared with the sync psycopg driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from psycopool._drivers._interface import IDLE, AsyncDriver, SessionState
from psycopool._drivers._masking import masked_error
from psycopool._drivers._psycopg import (
    DROPS_PREPARED,
    PsycopgInspector,
    forget_prepared,
    prepared_names,
    watch_fatal_notices,
)


class AsyncPsycopgDriver(PsycopgInspector, AsyncDriver):
    """psycopg 3's ``AsyncConnection``."""

    def __init__(self) -> None:
        self.connection_class: type[Any] = psycopg.AsyncConnection

    async def aconnect(self, conninfo: str, kwargs: Mapping[str, Any]) -> Any:
        try:
            conn = await self.connection_class.connect(conninfo, **kwargs)
        except psycopg.Error as exc:
            masked = masked_error(exc, conninfo, kwargs)
            if masked is exc:
                raise
            conn = None
        if conn is None:
            raise masked from None  # outside the handler: the original isn't chained
        watch_fatal_notices(conn)
        return conn

    def close(self, conn: Any) -> None:
        # AsyncConnection.close() awaits nothing: it marks the connection closed
        # and calls libpq's PQfinish. Run it to its end here, without a loop; a
        # subclass whose close() does suspend is abandoned and finished by libpq.
        try:
            if getattr(conn, "_pool", None) is not None:
                conn._pool = None  # really close it: don't return it (close_returns)
            coro = conn.close()
            try:
                coro.send(None)
            except StopIteration:
                return
            coro.close()
            conn.pgconn.finish()
        except Exception:  # a broken connection may fail to close: it is gone anyway
            pass

    async def arestore_session(self, conn: Any, state: SessionState) -> None:
        autocommit, isolation_level, read_only, deferrable = state
        if conn.autocommit != autocommit:
            await conn.set_autocommit(autocommit)
        if conn.isolation_level != isolation_level:
            await conn.set_isolation_level(isolation_level)
        if conn.read_only != read_only:
            await conn.set_read_only(read_only)
        if conn.deferrable != deferrable:
            await conn.set_deferrable(deferrable)

    async def arollback(self, conn: Any) -> None:
        if conn.pgconn.transaction_status != IDLE:
            if conn.autocommit:
                await conn.execute("ROLLBACK")
            else:
                await conn.rollback()

    async def acommit(self, conn: Any) -> None:
        if conn.pgconn.transaction_status != IDLE:
            if conn.autocommit:
                await conn.execute("COMMIT")
            else:
                await conn.commit()

    async def aexecute_autocommit(self, conn: Any, sql: str) -> None:
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            # Never prepared, as in the sync driver (see there).
            await conn.execute(sql, prepare=False)
        finally:
            if not conn.closed and not autocommit:
                await conn.set_autocommit(False)
        if DROPS_PREPARED(sql):
            forget_prepared(conn)

    async def aafter_reset(self, conn: Any) -> None:
        names = prepared_names(conn)
        if not names:
            return
        autocommit = conn.autocommit
        if not autocommit:
            await conn.set_autocommit(True)
        try:
            cur = await conn.execute("SELECT name FROM pg_prepared_statements", prepare=False)
            on_server = {row[0] for row in await cur.fetchall()}
        finally:
            if not conn.closed and not autocommit:
                await conn.set_autocommit(False)
        if not names <= on_server:
            forget_prepared(conn)
