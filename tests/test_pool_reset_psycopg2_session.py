"""psycopg2 session restore: no round trip when nothing reached the server, no leak when it did.

psycopg2 sends isolation level, read only and deferrable to the server (``SET
default_transaction_*``) only in autocommit mode, and resets them there when it leaves autocommit
mode. Every pool has max_size=1 so the next borrower gets the same server session back.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions as ext
import pytest
from _modern import execute, pid_of, query

from psycopool import ConnectionPool

DEFAULT_SESSION = ("read committed", "off", "off")


def _server_session(conn: Any) -> tuple[str, str, str]:
    values = (
        query(conn, "SHOW transaction_isolation"),
        query(conn, "SHOW transaction_read_only"),
        query(conn, "SHOW transaction_deferrable"),
    )
    if not conn.autocommit:
        conn.rollback()
    return values


def _last_statement(pg_server: Any, pid: int) -> str:
    admin = pg_server.admin_connect()
    try:
        return str(query(admin, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)))
    finally:
        admin.close()


def test_isolation_level_put_back_by_the_borrower_costs_no_round_trip(pg_server: Any, dsn: str):
    # What SQLAlchemy does on checkin after execution_options(isolation_level=...):
    # set_isolation_level(READ COMMITTED), client-side outside autocommit mode.
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        pid = pid_of(conn)
        conn.set_isolation_level(ext.ISOLATION_LEVEL_SERIALIZABLE)
        execute(conn, "SELECT 'psycopool-marker'")
        conn.commit()
        conn.set_isolation_level(ext.ISOLATION_LEVEL_READ_COMMITTED)
        conn.readonly = False
        pool.putconn(conn)
        # Nothing was sent after the COMMIT (the restore used to send three SETs).
        assert _last_statement(pg_server, pid) == "COMMIT"
        conn2 = pool.getconn(timeout=5)
        assert conn2 is conn
        assert (conn2.autocommit, conn2.isolation_level, conn2.readonly, conn2.deferrable) == (
            False,
            None,
            None,
            None,
        )
        assert _server_session(conn2) == DEFAULT_SESSION
        pool.putconn(conn2)


@pytest.mark.parametrize("final_autocommit", [False, True])
def test_settings_sent_in_autocommit_mode_never_leak(dsn: str, final_autocommit: bool):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        conn.autocommit = True
        conn.set_session(
            isolation_level=ext.ISOLATION_LEVEL_SERIALIZABLE, readonly=True, deferrable=True
        )
        assert _server_session(conn) == ("serializable", "on", "on")
        # Back out of autocommit mode and to client-side defaults, or stay there.
        conn.autocommit = final_autocommit
        conn.isolation_level = ext.ISOLATION_LEVEL_REPEATABLE_READ
        pool.putconn(conn)
        conn2 = pool.getconn(timeout=5)
        assert conn2 is conn
        assert (conn2.autocommit, conn2.isolation_level, conn2.readonly, conn2.deferrable) == (
            False,
            None,
            None,
            None,
        )
        assert _server_session(conn2) == DEFAULT_SESSION
        conn2.autocommit = True  # what the server applies to an explicit BEGIN too
        assert _server_session(conn2) == DEFAULT_SESSION
        pool.putconn(conn2)


def test_autocommit_baseline_from_configure_is_restored_on_the_server(dsn: str):
    def configure(conn: Any) -> None:
        conn.autocommit = True
        conn.readonly = True  # sent to the server: SET default_transaction_read_only

    with ConnectionPool(dsn, min_size=1, max_size=1, configure=configure) as pool:
        conn = pool.getconn(timeout=5)
        assert _server_session(conn) == ("read committed", "on", "off")
        conn.autocommit = False  # psycopg2 resets the server's read only default
        conn.readonly = False
        conn.isolation_level = ext.ISOLATION_LEVEL_SERIALIZABLE
        assert _server_session(conn) == ("serializable", "off", "off")
        pool.putconn(conn)
        conn2 = pool.getconn(timeout=5)
        assert conn2 is conn
        assert (conn2.autocommit, conn2.isolation_level, conn2.readonly, conn2.deferrable) == (
            True,
            None,
            True,
            None,
        )
        assert _server_session(conn2) == ("read committed", "on", "off")
        pool.putconn(conn2)
