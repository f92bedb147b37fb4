"""ConnectionPool reset on return: rollback + session attributes, DISCARD ALL, callables, configure.

Every pool here has max_size=1, so the next borrower gets the same server session back (checked
by its backend pid) and sees whatever the previous one left.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extensions as ext
import pytest
from _modern import execute, pid_of, query

from psycopool import ConnectionPool


def _server_session(conn: Any) -> tuple[str, str, str]:
    """What the server applies to a new transaction: isolation, read only, deferrable."""
    values = (
        query(conn, "SHOW transaction_isolation"),
        query(conn, "SHOW transaction_read_only"),
        query(conn, "SHOW transaction_deferrable"),
    )
    if not conn.autocommit:
        conn.rollback()
    return values


DEFAULT_SESSION = ("read committed", "off", "off")


@pytest.mark.parametrize("autocommit", [False, True])
def test_rollback_restores_session_attributes(dsn: str, autocommit: bool):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
            conn.rollback()
            assert (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable) == (
                False,
                None,
                None,
                None,
            )
            # In autocommit mode psycopg2 sends SET default_transaction_* to the server.
            conn.autocommit = autocommit
            conn.set_session(
                isolation_level=ext.ISOLATION_LEVEL_SERIALIZABLE, readonly=True, deferrable=True
            )
            assert _server_session(conn) == ("serializable", "on", "on")
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn and pid_of(conn2) == pid
            conn2.rollback()
            assert conn2.autocommit is False
            assert conn2.isolation_level is None
            assert conn2.readonly is None
            assert conn2.deferrable is None
            # Checked server-side, in a new transaction.
            assert _server_session(conn2) == DEFAULT_SESSION


def test_rollback_ends_explicit_begin_in_autocommit(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        conn.autocommit = True
        execute(conn, "CREATE TEMP TABLE tt (x int)")
        execute(conn, "BEGIN")
        execute(conn, "INSERT INTO tt VALUES (1)")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
        pool.putconn(conn)
        conn2 = pool.getconn(timeout=5)
        assert conn2 is conn
        assert conn2.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert conn2.autocommit is False
        assert query(conn2, "SELECT count(*) FROM tt") == 0  # rolled back
        conn2.rollback()
        pool.putconn(conn2)


def test_uncommitted_transaction_rolled_back_on_putconn(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        conn.autocommit = True
        execute(conn, "CREATE TEMP TABLE tt (x int)")
        conn.autocommit = False
        execute(conn, "INSERT INTO tt VALUES (1)")
        pool.putconn(conn)  # no commit
        conn = pool.getconn(timeout=5)
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert query(conn, "SELECT count(*) FROM tt") == 0
        conn.rollback()
        pool.putconn(conn)


def test_failed_transaction_is_rolled_back(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        with pytest.raises(psycopg2.errors.DivisionByZero):
            execute(conn, "SELECT 1 / 0")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR
        pool.putconn(conn)
        conn2 = pool.getconn(timeout=5)
        assert conn2 is conn
        assert conn2.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        assert query(conn2, "SELECT 1") == 1
        pool.putconn(conn2)


def _dirty_session(conn: Any) -> None:
    """Leave every kind of session state DISCARD ALL removes."""
    conn.autocommit = True
    execute(conn, "CREATE TEMP TABLE tt (x int)")
    execute(conn, "SET work_mem = '7MB'")
    execute(conn, "LISTEN psycopool_test_channel")
    execute(conn, "SELECT pg_advisory_lock(4242)")
    execute(conn, "PREPARE psycopool_stmt AS SELECT 1")
    assert query(conn, "SHOW work_mem") == "7MB"
    assert query(conn, "SELECT count(*) FROM pg_prepared_statements") == 1


def _advisory_locks(pg_server: Any, pid: int) -> int:
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)
            )
            return int(cur.fetchone()[0])
    finally:
        admin.close()


def test_discard_resets_session_state(pg_server: Any, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, reset="discard") as pool:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
            default_work_mem = query(conn, "SHOW work_mem")
            conn.rollback()
            _dirty_session(conn)
            assert _advisory_locks(pg_server, pid) == 1
        assert _advisory_locks(pg_server, pid) == 0
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn and pid_of(conn2) == pid
            assert conn2.autocommit is False  # session attributes restored too
            assert query(conn2, "SELECT to_regclass('pg_temp.tt')") is None
            assert query(conn2, "SHOW work_mem") == default_work_mem
            assert query(conn2, "SELECT count(*) FROM pg_listening_channels()") == 0
            assert query(conn2, "SELECT count(*) FROM pg_prepared_statements") == 0


def test_rollback_alone_keeps_session_state(dsn: str):
    """The control for the test above: only reset='discard' does DISCARD ALL."""
    with ConnectionPool(dsn, min_size=1, max_size=1, reset="rollback") as pool:
        with pool.connection(timeout=5) as conn:
            _dirty_session(conn)
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert query(conn2, "SHOW work_mem") == "7MB"
            assert query(conn2, "SELECT count(*) FROM pg_prepared_statements") == 1


def test_callable_reset_runs_on_every_return(dsn: str):
    calls: list[Any] = []

    def reset(conn: Any) -> None:
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE  # after rollback
        calls.append(conn)
        execute(conn, "SELECT 1")  # leaves a transaction open: the pool ends it

    with ConnectionPool(dsn, min_size=1, max_size=1, reset=reset) as pool:
        for _ in range(3):
            with pool.connection(timeout=5) as conn:
                execute(conn, "SELECT 2")
        assert calls == [conn, conn, conn]
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert conn2.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE


def test_callable_reset_statements_take_effect(dsn: str):
    def reset(conn: Any) -> None:
        execute(conn, "RESET work_mem")

    with ConnectionPool(dsn, min_size=1, max_size=1, reset=reset) as pool:
        with pool.connection(timeout=5) as conn:
            default = query(conn, "SHOW work_mem")
            conn.rollback()
            conn.autocommit = True
            execute(conn, "SET work_mem = '9MB'")
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert query(conn2, "SHOW work_mem") == default


def test_failing_reset_closes_the_connection(pg_server: Any, app_name: str, dsn: str):
    def reset(conn: Any) -> None:
        raise RuntimeError("can't reset")

    with ConnectionPool(dsn, min_size=0, max_size=1, reset=reset) as pool:
        conn = pool.getconn(timeout=5)
        pid = pid_of(conn)
        conn.rollback()
        assert pg_server.count(app_name) == 1
        pool.putconn(conn)  # no error for the caller
        assert conn.closed
        assert pg_server.wait_count(app_name, 0) == 0
        conn2 = pool.getconn(timeout=5)
        assert conn2 is not conn and pid_of(conn2) != pid
        conn2.rollback()
        pool.putconn(conn2)


def test_configure_runs_on_every_new_connection_and_sets_the_baseline(
    pg_server: Any, app_name: str, dsn: str
):
    configured: list[Any] = []

    def configure(conn: Any) -> None:
        configured.append(conn)
        conn.autocommit = True  # a baseline attribute
        execute(conn, "BEGIN")
        execute(conn, "SET work_mem = '3MB'")  # left in a transaction: the pool commits it

    with ConnectionPool(dsn, min_size=2, max_size=2, configure=configure) as pool:
        pool.wait(timeout=5)
        assert len(configured) == 2
        with pool.connection(timeout=5) as conn:
            assert conn in configured
            assert conn.autocommit is True
            assert query(conn, "SHOW work_mem") == "3MB"
            conn.autocommit = False
            conn.set_session(readonly=True)
        with pool.connection(timeout=5) as conn:
            assert conn in configured
            assert conn.autocommit is True  # restored to configure's value
            assert conn.readonly is None
            assert query(conn, "SHOW work_mem") == "3MB"
        # Replacements are configured too.
        pg_server.terminate(app_name)
        pool.check()
        pool.wait(timeout=5)
        assert len(configured) == 4
        assert pool.stats()["connections_num"] == 4
        with pool.connection(timeout=5) as conn:
            assert conn is configured[-1] or conn is configured[-2]
            assert query(conn, "SHOW work_mem") == "3MB"


def test_failing_configure_closes_the_connection(pg_server: Any, app_name: str, dsn: str):
    def configure(conn: Any) -> None:
        raise RuntimeError("configure failed on purpose")

    with ConnectionPool(dsn, min_size=1, max_size=1, configure=configure) as pool:
        with pytest.raises(Exception, match="configure failed on purpose"):
            pool.getconn(timeout=0.5)
        assert pool.stats()["connections_errors"] >= 1
        # the backend exits asynchronously after the client closes: a bounded wait, not one read
        assert pg_server.wait_count(app_name, 0, timeout=10) == 0


def test_configure_settings_survive_discard(dsn: str):
    def configure(conn: Any) -> None:
        conn.autocommit = True
        execute(conn, "SET work_mem = '3MB'")
        conn.autocommit = False

    with ConnectionPool(dsn, min_size=1, max_size=1, configure=configure, reset="discard") as pool:
        with pool.connection(timeout=5) as conn:
            assert query(conn, "SHOW work_mem") == "3MB"
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert query(conn2, "SHOW work_mem") == "3MB"
