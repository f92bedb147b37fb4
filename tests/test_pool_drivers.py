"""ConnectionPool's key behaviours with both drivers, and with a connection class passed in."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import psycopg2
import psycopg2.extensions
import pytest

from psycopool import ConnectionPool, PoolClosed, PoolError, PoolTimeout

DRIVERS = {
    "psycopg2": psycopg2,
    "psycopg": psycopg,
}


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def one(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return row[0]


def status(conn: Any) -> int:
    """libpq's transaction status (both drivers use its numbers)."""
    if isinstance(conn, psycopg.Connection):
        return int(conn.info.transaction_status)
    return int(conn.get_transaction_status())


def set_session(conn: Any, driver: str) -> None:
    """Change autocommit, isolation, read only and deferrable with the driver's own API."""
    if driver == "psycopg2":
        conn.rollback()
        conn.set_session(
            isolation_level=psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE,
            readonly=True,
            deferrable=True,
            autocommit=True,
        )
    else:
        conn.rollback()
        conn.autocommit = True
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.read_only = True
        conn.deferrable = True


def test_borrow_commit_rollback(pg_server: Any, app_name: str, dsn: str, driver: str):
    admin = pg_server.admin_connect()
    table = "t_" + app_name.rsplit("-", 1)[-1] + "_" + driver
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (x int)")
        with ConnectionPool(dsn, min_size=1, max_size=2, driver=driver) as pool:
            with pool.connection(timeout=5) as conn:
                expected = (
                    psycopg.Connection if driver == "psycopg" else psycopg2.extensions.connection
                )
                assert isinstance(conn, expected)
                conn.cursor().execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(KeyError):
                with pool.connection(timeout=5) as conn:
                    conn.cursor().execute(f"INSERT INTO {table} VALUES (2)")
                    raise KeyError("boom")
            with admin.cursor() as cur:
                cur.execute(f"SELECT array_agg(x) FROM {table}")
                assert cur.fetchone()[0] == [1]
            assert pool.stats()["connections_in_use"] == 0
        assert pg_server.wait_count(app_name, 0) == 0
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        admin.close()


def test_errors_derive_from_the_drivers_operational_error(dsn: str, driver: str):
    operational = DRIVERS[driver].OperationalError
    pool = ConnectionPool(dsn, min_size=1, max_size=1, driver=driver)
    try:
        held = pool.getconn(timeout=5)
        with pytest.raises(operational) as info:
            pool.getconn(timeout=0.05)
        assert isinstance(info.value, PoolTimeout) and isinstance(info.value, PoolError)
        pool.putconn(held)
    finally:
        pool.close()
    with pytest.raises(operational) as info:
        pool.getconn(timeout=0.05)
    assert isinstance(info.value, PoolClosed)


def test_terminated_backends_replaced(pg_server: Any, app_name: str, dsn: str, driver: str):
    with ConnectionPool(dsn, min_size=2, max_size=2, driver=driver) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        pg_server.terminate(app_name)
        time.sleep(0.01)
        with pool.connection(timeout=5) as a, pool.connection(timeout=5) as b:
            now = {one(a, "SELECT pg_backend_pid()"), one(b, "SELECT pg_backend_pid()")}
        assert len(now) == 2 and not now & before
        assert pool.stats()["connections_lost"] == 2


def test_reset_rollback_restores_session(dsn: str, driver: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver) as pool:
        with pool.connection(timeout=5) as conn:
            set_session(conn, driver)
            conn.cursor().execute("BEGIN")  # an explicit transaction in autocommit mode
            assert status(conn) == 2
            if driver == "psycopg2":  # psycopg 3 applies them at its own BEGIN only
                assert one(conn, "SHOW transaction_isolation") == "serializable"
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert status(conn2) == 0
            assert conn2.autocommit is False
            assert conn2.isolation_level is None and conn2.deferrable is None
            assert (conn2.readonly if driver == "psycopg2" else conn2.read_only) is None
            server = (
                one(conn2, "SHOW transaction_isolation"),
                one(conn2, "SHOW transaction_read_only"),
                one(conn2, "SHOW transaction_deferrable"),
            )
            assert server == ("read committed", "off", "off")


def test_reset_discard(dsn: str, driver: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver, reset="discard") as pool:
        with pool.connection(timeout=5) as conn:
            conn.rollback()
            conn.autocommit = True
            conn.cursor().execute("CREATE TEMP TABLE tt (x int)")
            conn.cursor().execute("SET work_mem = '7MB'")
            conn.cursor().execute("SELECT pg_advisory_lock(1)")
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert one(conn2, "SELECT to_regclass('pg_temp.tt')") is None
            assert one(conn2, "SHOW work_mem") != "7MB"
            assert (
                one(
                    conn2,
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid()",
                )
                == 0
            )


def test_server_count_bounded_and_zero_after_close(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    pool = ConnectionPool(dsn, min_size=1, max_size=3, driver=driver)
    try:
        conns = [pool.getconn(timeout=5) for _ in range(3)]
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        assert pg_server.count(app_name) == 3
        pool.putconn(conns.pop())
    finally:
        pool.close(timeout=0.1)
    assert pg_server.wait_count(app_name, 0) == 0


def test_psycopg_connection_subclass(pg_server: Any, app_name: str, dsn: str):
    class MyConnection(psycopg.Connection):  # type: ignore[type-arg]
        pass

    with ConnectionPool(dsn, min_size=1, max_size=1, driver=MyConnection) as pool:
        with pool.connection(timeout=5) as conn:
            assert type(conn) is MyConnection
            assert one(conn, "SELECT 1") == 1
        held = pool.getconn(timeout=5)
        with pytest.raises(psycopg.OperationalError):  # the pool's errors are psycopg's
            pool.getconn(timeout=0.05)
        pool.putconn(held)
    assert pg_server.wait_count(app_name, 0) == 0


def test_psycopg2_connection_subclass(dsn: str):
    class MyConnection(psycopg2.extensions.connection):
        pass

    with ConnectionPool(dsn, min_size=1, max_size=1, driver=MyConnection) as pool:
        with pool.connection(timeout=5) as conn:
            assert type(conn) is MyConnection
            assert one(conn, "SELECT 1") == 1


def test_not_a_connection_class_is_rejected():
    class NotAConnection:
        pass

    with pytest.raises(ValueError, match="driver"):
        ConnectionPool("", driver=NotAConnection, open=False)
