"""ConnectionPool health: dead connections replaced, checks, restart, stopped server and backoff."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg2
import pytest
from _modern import pid_of, query, wait_until

from psycopool import ConnectionPool, PoolTimeout

#: Idle connections returned less than 0.1 ms ago skip the check (RECENTLY_USED): wait past it.
PAST_RECENT = 0.01


def _activity(pg_server: Any, pid: int) -> tuple[Any, Any]:
    """(query_start, query) of a backend, as the server last saw it."""
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT query_start, query FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
            assert row is not None, f"backend {pid} is gone"
            return row[0], row[1]
    finally:
        admin.close()


# -- dead connections --------------------------------------------------------------------------


def test_terminated_idle_backends_replaced_without_error(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=2, max_size=2) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        assert len(before) == 2
        assert pg_server.terminate(app_name) == 2
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as a, pool.connection(timeout=5) as b:
            assert query(a, "SELECT 1") == 1 and query(b, "SELECT 1") == 1
            now = {pid_of(a), pid_of(b)}
        assert len(now) == 2 and not now & before
        assert pool.stats()["connections_lost"] == 2
        assert pg_server.wait_count(app_name, 2) == 2


def test_connection_handed_to_a_waiter_is_checked(pg_server: Any, app_name: str, dsn: str):
    # Ended by the server while lent, returned by a borrower who ran nothing after: it
    # looks clean. The waiter it is handed to must get a working connection instead.
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        old = pid_of(conn)
        conn.rollback()
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn(timeout=10)))
        waiter.start()
        assert wait_until(lambda: pool.stats()["requests_waiting"] == 1)
        assert pg_server.terminate(app_name) == 1
        assert wait_until(lambda: _readable(conn))
        pool.putconn(conn)  # handed straight to the waiter
        waiter.join(10)
        assert got, "the waiter got no connection"
        assert query(got[0], "SELECT 1") == 1
        assert pid_of(got[0]) != old
        assert pool.stats()["connections_lost"] == 1
        pool.putconn(got[0])


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_idle_connection_that_got_a_notify_is_kept(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    # Input on an idle socket is not always a goodbye: a NOTIFY must not cost the connection.
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver) as pool:
        with pool.connection(timeout=5) as conn:
            conn.autocommit = True
            conn.cursor().execute("LISTEN psycopool_test")
            conn.autocommit = False
            pid = pid_of(conn)
        admin = pg_server.admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute("NOTIFY psycopool_test, 'hello'")
        finally:
            admin.close()
        fd = conn.fileno() if driver == "psycopg2" else conn.pgconn.socket
        assert wait_until(lambda: _fd_readable(fd))
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as again:
            assert again is conn
            assert pid_of(again) == pid
        assert pool.stats()["connections_lost"] == 0


def _fd_readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])


def _readable(conn: Any) -> bool:
    """Has the server sent something (its goodbye) to this idle connection?"""
    import select

    return bool(select.select([conn.fileno()], [], [], 0)[0])


def test_backend_terminated_while_lent_is_discarded_on_return(
    pg_server: Any, app_name: str, dsn: str
):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pytest.raises(psycopg2.OperationalError):
            with pool.connection(timeout=5) as conn:
                old = pid_of(conn)
                pg_server.terminate(app_name)
                query(conn, "SELECT 1")  # the borrower sees its own error
        assert conn.closed
        assert pool.stats()["returns_bad"] == 1
        with pool.connection(timeout=5) as conn:
            assert pid_of(conn) != old
        assert pg_server.wait_count(app_name, 1) == 1


def test_connection_closed_by_the_user_is_replaced(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        old = pid_of(conn)
        conn.close()
        pool.putconn(conn)
        assert pool.stats()["returns_bad"] == 1
        with pool.connection(timeout=5) as conn2:
            assert conn2 is not conn
            assert not conn2.closed
            assert pid_of(conn2) != old
        assert pg_server.wait_count(app_name, 1) == 1


def test_check_replaces_dead_idle_connections(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=2, max_size=2) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        pg_server.terminate(app_name)
        pool.check()
        assert pool.stats()["connections_lost"] == 2
        pool.wait(timeout=5)
        assert pg_server.wait_count(app_name, 2) == 2
        assert not set(pg_server.pids(app_name)) & before


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_check_keeps_healthy_idle_connections_idle(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    """Regression: check() pinged with an empty query (psycopg2 refused it, psycopg began a
    transaction)."""
    with ConnectionPool(dsn, min_size=2, max_size=2, driver=driver) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        pool.check()
        assert pool.stats()["connections_lost"] == 0
        assert set(pg_server.pids(app_name)) == before
        admin = pg_server.admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute(
                    "SELECT state FROM pg_stat_activity WHERE application_name = %s", (app_name,)
                )
                assert sorted(r[0] for r in cur.fetchall()) == ["idle", "idle"]
        finally:
            admin.close()


# -- check policies ----------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_check_ping_keeps_a_healthy_connection_clean(pg_server: Any, dsn: str, driver: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, check="ping", driver=driver) as pool:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
        returned_at, _ = _activity(pg_server, pid)
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as conn:
            # Lent clean: no transaction open.
            if driver == "psycopg2":
                assert conn.get_transaction_status() == 0
            else:
                assert conn.info.transaction_status == 0
            pinged_at, _ = _activity(pg_server, pid)
            assert pinged_at > returned_at  # a round trip to the server
            assert pid_of(conn) == pid  # the same, healthy connection
        assert pool.stats()["connections_lost"] == 0


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_check_ping_replaces_terminated_connection(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    with ConnectionPool(dsn, min_size=1, max_size=1, check="ping", driver=driver) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        pg_server.terminate(app_name)
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as conn:
            assert query(conn, "SELECT 1") == 1
            assert pid_of(conn) not in before
        assert pool.stats()["connections_lost"] >= 1


def test_check_callable_called_and_failure_replaces(pg_server: Any, app_name: str, dsn: str):
    seen: list[Any] = []
    reject: list[Any] = []

    def check(conn: Any) -> None:
        seen.append(conn)
        if conn in reject:
            raise RuntimeError("rejected by the check")

    with ConnectionPool(dsn, min_size=1, max_size=1, check=check) as pool:
        pool.wait(timeout=5)
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as conn:
            first = pid_of(conn)
        assert seen == [conn]

        reject.append(conn)
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as conn2:
            # The caller never sees the rejected connection: a new one replaces it,
            # and is checked too (handed over by the connector).
            assert conn2 is not conn
            second = pid_of(conn2)
        assert second != first
        assert seen[-2:] == [conn, conn2]
        assert pool.stats()["connections_lost"] == 1
        assert first not in pg_server.pids(app_name)


def test_check_none_makes_no_round_trip(pg_server: Any, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, check=None) as pool:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
        before = _activity(pg_server, pid)
        time.sleep(PAST_RECENT)
        with pool.connection(timeout=5) as conn2:
            assert conn2 is conn
            assert _activity(pg_server, pid) == before  # nothing sent on checkout
        assert pool.stats()["connections_lost"] == 0


# -- server restart, server stopped ------------------------------------------------------------


def test_pool_recovers_after_server_restart(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=2, max_size=3) as pool:
        pool.wait(timeout=5)
        before = set(pg_server.pids(app_name))
        pg_server.restart()
        time.sleep(PAST_RECENT)
        for _ in range(3):
            with pool.connection(timeout=10) as conn:
                assert query(conn, "SELECT 1") == 1
                assert pid_of(conn) not in before
        pool.wait(timeout=10)
        assert pool.stats()["connections_lost"] >= 2
        assert pg_server.wait_count(app_name, 2) >= 2


def test_server_stopped_backoff_then_recovery(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=5)
        pg_server.stop()
        started = time.monotonic()
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.5)
        assert time.monotonic() - started < 0.6
        message = str(info.value)
        assert "last connection attempt failed" in message
        assert "connect" in message.lower()  # libpq's own words follow

        # Backoff: a few attempts, not a busy loop.
        first = pool.stats()["connections_errors"]
        assert first >= 1
        time.sleep(1.5)
        errors = pool.stats()["connections_errors"]
        assert errors > first  # still trying
        assert errors < 10

        pg_server.start()
        # Recovers by itself: nobody asks for a connection.
        assert wait_until(lambda: pool.stats()["pool_available"] == 1, timeout=15)
        pool.wait(timeout=5)
        assert pool.stats()["reconnects"] >= 1
        with pool.connection(timeout=5) as conn:
            assert query(conn, "SELECT 1") == 1
        assert pg_server.wait_count(app_name, 1) == 1
