"""psycopg_pool's bugs fixed and API added (issue 8), on both drivers."""

from __future__ import annotations

import gc
import threading
import time
import warnings
import weakref
from typing import Any, TypeVar

import psycopg
import psycopg2
import psycopg2.extensions
import pytest
from _modern import pid_of, wait_waiting

from psycopool import ConnectionPool, NullConnectionPool, PoolTimeout


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def failing_check(conn: Any) -> None:
    raise RuntimeError("rejected by check")


# -- bug 1: a connection closed inside the block ---------------------------------------


def test_connection_closed_inside_the_block_ends_it_quietly(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver) as pool:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
            conn.close()
        assert pool.stats()["returns_bad"] == 1
        with pool.connection(timeout=5) as conn2:  # a replacement was opened
            assert pid_of(conn2) != pid
        assert pg_server.wait_count(app_name, 1) == 1


# -- bug 2: the configured check on every path ------------------------------------------


def test_failing_check_times_out_on_the_first_borrow_after_open(pg_server: Any, dsn: str):
    with ConnectionPool(dsn, min_size=1, check=failing_check, timeout=1) as pool:
        with pytest.raises(PoolTimeout):  # handed over by a connector: checked too
            pool.getconn(timeout=1)
        assert pool.stats()["connections_lost"] >= 1


def test_check_runs_on_a_connection_handed_to_a_waiter(pg_server: Any, dsn: str, driver: str):
    checked: list[int] = []
    reject: list[Any] = []

    def check(conn: Any) -> None:
        checked.append(id(conn))
        if conn in reject:
            raise RuntimeError("demoted to standby")

    with ConnectionPool(dsn, min_size=1, max_size=1, check=check, driver=driver) as pool:
        pool.wait(10)
        conn = pool.getconn(timeout=5)
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(pool.getconn(timeout=10)))
        thread.start()
        wait_waiting(pool, 1)
        reject.append(conn)  # its next check fails: the waiter must not get it
        pool.putconn(conn)
        thread.join(10)
        assert id(conn) in checked  # checked on the handoff, and refused
        assert result and result[0] is not conn  # a replacement, checked too
        assert checked[-1] == id(result[0])
        assert pool.stats()["connections_lost"] == 1
        pool.putconn(result[0])


# -- bug 3 and counters -------------------------------------------------------------------


def test_connections_num_counts_attempts(pg_server: Any, dsn: str):
    fail = [2]

    def conninfo() -> str:
        if fail[0]:
            fail[0] -= 1
            return dsn + " port=1"  # refused
        return dsn

    with ConnectionPool(conninfo, min_size=1) as pool:
        pool.wait(10)
        stats = pool.get_stats()
        assert stats["connections_num"] == 3 and stats["connections_errors"] == 2


def test_usage_ms_counts_time_lent(pg_server: Any, dsn: str):
    with ConnectionPool(dsn, min_size=1) as pool:
        with pool.connection(timeout=5) as conn:
            pid_of(conn)
            threading.Event().wait(0.05)
        assert pool.get_stats()["usage_ms"] >= 40


# -- check_connection, connection_class, close_returns ------------------------------------


def test_check_connection_static_method(pg_server: Any, dsn: str, driver: str):
    with ConnectionPool(
        dsn, min_size=1, check=ConnectionPool.check_connection, driver=driver
    ) as pool:
        with pool.connection(timeout=5) as conn:
            ConnectionPool.check_connection(conn)
            pid_of(conn)
    conn.close()
    with pytest.raises(Exception):  # noqa: B017 - each driver's own error
        ConnectionPool.check_connection(conn)


class MyConnection(psycopg.Connection[Any]):
    pass


Row = TypeVar("Row")


class MyGenericConnection(psycopg.Connection[Row]):
    pass


class MyPg2Connection(psycopg2.extensions.connection):
    pass


@pytest.mark.parametrize("cls", [MyConnection, MyPg2Connection])
def test_connection_class(pg_server: Any, dsn: str, cls: type[Any]):
    with ConnectionPool[Any](dsn, min_size=1, connection_class=cls) as pool:
        with pool.connection(timeout=5) as conn:
            assert type(conn) is cls
    generic = MyGenericConnection[tuple[Any, ...]]  # a parametrised alias, as psycopg_pool allows
    with ConnectionPool(dsn, min_size=1, connection_class=generic, open=False) as pool:
        with pool.connection(timeout=5) as conn:
            assert type(conn) is MyGenericConnection


@pytest.mark.parametrize("cls", [None, MyConnection, MyPg2Connection])
def test_close_returns(pg_server: Any, dsn: str, driver: str, cls: Any):
    if cls is not None and (cls is MyConnection) != (driver == "psycopg"):
        pytest.skip("class of the other driver")
    with ConnectionPool(
        dsn, min_size=1, max_size=1, close_returns=True, driver=driver, connection_class=cls
    ) as pool:
        conn = pool.getconn(timeout=5)
        pid = pid_of(conn)
        conn.close()  # returned, not closed
        assert not conn.closed
        assert pool.stats()["connections_in_use"] == 0
        with pool.connection(timeout=5) as again:
            assert pid_of(again) == pid
        conn.close()  # not lent: not the pool's to take back (closing an idle one is refused)
        still = pool.getconn(timeout=5)
        pool.close(timeout=0.1)
    # Closing the pool closes what is lent without looping through close().
    assert still.closed


# -- NullConnectionPool ---------------------------------------------------------------------


def test_null_pool_keeps_nothing(pg_server: Any, app_name: str, dsn: str, driver: str):
    with pytest.raises(ValueError, match="min_size"):
        NullConnectionPool(dsn, min_size=1, open=False)
    with NullConnectionPool(dsn, max_size=2, driver=driver) as pool:
        pool.wait(10)
        assert pool.max_size == 2 and pool.min_size == 0
        with pool.connection(timeout=5) as conn:
            first = pid_of(conn)
        assert pg_server.wait_count(app_name, 0) == 0
        with pool.connection(timeout=5) as conn:
            assert pid_of(conn) != first
        assert pg_server.wait_count(app_name, 0) == 0
        # max_size bounds; a waiter gets the returned connection, cleaned, not a new one.
        a, b = pool.getconn(timeout=5), pool.getconn(timeout=5)
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(pool.getconn(timeout=10)))
        thread.start()
        wait_waiting(pool, 1)
        pool.putconn(a)
        thread.join(10)
        assert got == [a]
        pool.putconn(a)
        pool.putconn(b)
        assert pg_server.wait_count(app_name, 0) == 0
    for unbounded in (None, 0):  # no bound, reported as 0, as psycopg_pool
        with NullConnectionPool(dsn, max_size=unbounded, driver=driver) as pool:
            assert pool.max_size == 0 and pool.get_stats()["pool_max"] == 0


# -- an abandoned pool ----------------------------------------------------------------------


def test_abandoned_pool_warns_once_naming_itself(pg_server: Any, app_name: str, dsn: str):
    pool: Any = ConnectionPool(dsn, min_size=2, driver="psycopg", name="forgotten")
    pool.wait(10)
    gone = weakref.ref(pool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del pool
        # A background thread in the middle of a pass holds the pool for that long: on a
        # loaded machine the first collection can come too early (it failed once so).
        deadline = time.monotonic() + 10
        while gone() is not None and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.01)
    assert gone() is None
    resource = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert len(resource) == 1, [str(w.message) for w in resource]
    assert "'forgotten'" in str(resource[0].message)
    assert pg_server.wait_count(app_name, 0) == 0
