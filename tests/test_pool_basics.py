"""ConnectionPool basics: borrowing, returning, repr, stats, arguments, errors.

The life cycle (open, close) is in test_pool_lifecycle.py.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import pytest
from _modern import execute, pid_of, query, wait_until, wait_waiting

import psycopool
from psycopool import ConnectionPool, PoolClosed, PoolError, PoolTimeout, TooManyRequests


@pytest.fixture
def table(pg_server: Any, app_name: str) -> Any:
    """A real table (committed rows are visible to other sessions); dropped afterwards."""
    name = "t_" + app_name.rsplit("-", 1)[-1]
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (x int)")
        yield name
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {name}")
    finally:
        admin.close()


def _rows(pg_server: Any, table: str) -> list[int]:
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(f"SELECT x FROM {table} ORDER BY x")
            return [r[0] for r in cur.fetchall()]
    finally:
        admin.close()


# -- connection(), getconn, putconn ------------------------------------------------------------


def test_connection_commits_on_success(pg_server: Any, dsn: str, table: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pool.connection(timeout=5) as conn:
            execute(conn, f"INSERT INTO {table} VALUES (1)")
        assert _rows(pg_server, table) == [1]
        assert pool.stats()["connections_in_use"] == 0


def test_connection_rolls_back_on_error_and_returns(pg_server: Any, dsn: str, table: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pytest.raises(ZeroDivisionError):
            with pool.connection(timeout=5) as conn:
                execute(conn, f"INSERT INTO {table} VALUES (2)")
                pid = pid_of(conn)
                1 / 0  # noqa: B018
        assert _rows(pg_server, table) == []
        stats = pool.stats()
        assert stats["connections_in_use"] == 0
        assert stats["pool_available"] == 1
        # The same connection is reused, clean.
        with pool.connection(timeout=1) as conn2:
            assert conn2 is conn
            assert conn2.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
            assert pid_of(conn2) == pid


def test_connection_returned_after_sql_error(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pytest.raises(psycopg2.errors.UndefinedTable):
            with pool.connection(timeout=5) as conn:
                execute(conn, "SELECT * FROM no_such_table_here")
        with pool.connection(timeout=1) as conn:
            assert query(conn, "SELECT 42") == 42


def test_getconn_putconn_round_trip(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=0, max_size=2) as pool:
        a = pool.getconn(timeout=5)
        b = pool.getconn(timeout=5)
        assert a is not b
        assert pid_of(a) != pid_of(b)
        assert pool.stats()["connections_in_use"] == 2
        pool.putconn(a)
        pool.putconn(b)
        assert pool.stats()["connections_in_use"] == 0
        assert pool.stats()["pool_available"] == 2
        assert pg_server.count(app_name) == 2
        # LIFO: the warmest (last returned) first.
        again = pool.getconn(timeout=1)
        pool.putconn(again)
        assert again is b


def test_putconn_foreign_connection_raises(dsn: str):
    foreign = psycopg2.connect(dsn)
    try:
        with (
            ConnectionPool(dsn, min_size=1, max_size=1) as pool,
            ConnectionPool(dsn, min_size=1, max_size=1) as other,
        ):
            with pytest.raises(ValueError, match="not lent"):
                pool.putconn(foreign)
            conn = other.getconn(timeout=5)
            with pytest.raises(ValueError, match="not lent"):
                pool.putconn(conn)
            other.putconn(conn)
            # Nothing was disturbed.
            assert not foreign.closed and not conn.closed
            assert pool.stats()["pool_size"] == 1
    finally:
        foreign.close()


def test_putconn_twice_raises(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        pool.putconn(conn)
        with pytest.raises(ValueError, match="already returned"):
            pool.putconn(conn)
        # Still one connection, lent to one borrower at a time.
        assert pool.stats()["pool_available"] == 1
        a = pool.getconn(timeout=1)
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        pool.putconn(a)


# -- repr --------------------------------------------------------------------------------------


def test_repr_shows_name_sizes_state_and_no_password(dsn: str):
    secret = "s3cr3t-Pa55"
    pool = ConnectionPool(
        f"{dsn} password={secret}", min_size=1, max_size=3, name="orders", open=False
    )
    try:
        text = repr(pool)
        assert "'orders'" in text and "not open" in text
        assert "min_size=1" in text and "max_size=3" in text
        pool.open(wait=True, timeout=5)
        text = repr(pool)
        assert "open" in text and "not open" not in text
    finally:
        pool.close()
    text = repr(pool)
    assert "closed" in text
    assert secret not in text


def test_timeout_message_hides_the_password(pg_server: Any):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "s3cr3t-Pa55"
    with ConnectionPool(
        f"host=127.0.0.1 port={port} user=nobody password={secret} connect_timeout=2",
        min_size=1,
        max_size=1,
    ) as pool:
        with pytest.raises(PoolTimeout) as info:
            pool.getconn(timeout=0.4)
        assert secret not in str(info.value)
        assert secret not in repr(pool)


# -- stats -------------------------------------------------------------------------------------

STATS_KEYS = {
    "pool_min",
    "pool_max",
    "pool_size",
    "pool_available",
    "requests_waiting",
    "requests_num",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "returns_bad",
    "connections_num",
    "connections_ms",
    "connections_errors",
    "connections_lost",
}


def test_stats_keys_and_values_move(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
        pool.wait(timeout=5)
        stats = pool.stats()
        assert set(stats) >= STATS_KEYS
        assert all(isinstance(v, int) for v in stats.values())
        assert stats["pool_min"] == 1 and stats["pool_max"] == 2
        assert stats["pool_size"] == 1 and stats["pool_available"] == 1
        assert stats["connections_num"] == 1
        assert stats["requests_num"] == 0

        a = pool.getconn(timeout=5)
        b = pool.getconn(timeout=5)  # queued until a second connection is opened
        stats = pool.stats()
        assert stats["requests_num"] == 2
        assert stats["requests_queued"] == 1
        assert stats["pool_size"] == 2 and stats["pool_available"] == 0
        assert stats["connections_in_use"] == 2
        assert stats["connections_num"] == 2

        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        stats = pool.stats()
        assert stats["requests_num"] == 3
        assert stats["requests_errors"] == 1
        assert stats["requests_wait_ms"] >= 90

        b.close()  # a broken connection comes back
        pool.putconn(b)
        pool.putconn(a)
        stats = pool.stats()
        assert stats["returns_bad"] == 1
        assert stats["connections_in_use"] == 0
        assert wait_until(lambda: pool.stats()["pool_available"] >= 1)
        assert pg_server.wait_count(app_name, 1) <= 2


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"min_size": -1}, ValueError, ["min_size", "-1"]),
        ({"min_size": "2"}, TypeError, ["min_size", "'2'"]),
        ({"min_size": 1, "max_size": 0}, ValueError, ["max_size", "0"]),
        ({"min_size": 3, "max_size": 2}, ValueError, ["max_size", "min_size", "3", "2"]),
        ({"timeout": 0}, ValueError, ["timeout", "0"]),
        ({"timeout": -1.5}, ValueError, ["timeout", "-1.5"]),
        ({"timeout": "soon"}, TypeError, ["timeout", "'soon'"]),
        ({"max_waiting": -2}, ValueError, ["max_waiting", "-2"]),
        ({"max_idle": 0}, ValueError, ["max_idle", "0"]),
        ({"max_lifetime": -5}, ValueError, ["max_lifetime", "-5"]),
        ({"leak_timeout": float("nan")}, ValueError, ["leak_timeout", "nan"]),
        ({"check": "always"}, ValueError, ["check", "'always'"]),
        ({"reset": "everything"}, ValueError, ["reset", "'everything'"]),
        ({"configure": 42}, TypeError, ["configure", "42"]),
        ({"name": 7}, TypeError, ["name", "7"]),
        ({"driver": "mysql"}, ValueError, ["driver", "'mysql'"]),
        ({"kwargs": 42}, TypeError, ["kwargs", "42"]),
    ],
)
def test_bad_arguments_name_argument_and_value(
    dsn: str, kwargs: dict[str, Any], exc: type[Exception], words: list[str]
):
    with pytest.raises(exc) as info:
        ConnectionPool(dsn, open=False, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_conninfo_type(dsn: str):
    with pytest.raises(TypeError, match="conninfo"):
        ConnectionPool(42, open=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [0, -1])
def test_getconn_bad_timeout(dsn: str, timeout: float):
    with ConnectionPool(dsn, min_size=0, max_size=1) as pool:
        with pytest.raises(ValueError, match=f"timeout.*{timeout}"):
            pool.getconn(timeout=timeout)
        assert pool.stats()["connections_in_use"] == 0


def test_resize_bad_arguments(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=2) as pool:
        pool.wait(timeout=5)
        with pytest.raises(ValueError, match="max_size"):
            pool.resize(3, 2)
        assert pool.stats()["pool_max"] == 2 and pool.stats()["pool_min"] == 1


# -- errors ------------------------------------------------------------------------------------


def test_error_classes_are_public_pool_errors():
    for cls in (PoolTimeout, PoolClosed, TooManyRequests):
        assert issubclass(cls, PoolError)
        assert getattr(psycopool, cls.__name__) is cls


def test_raised_errors_are_pool_errors_and_driver_operational_errors(dsn: str):
    pool = ConnectionPool(dsn, min_size=1, max_size=1, max_waiting=1)
    try:
        held = pool.getconn(timeout=5)
        with pytest.raises(PoolTimeout) as timeout_info:
            pool.getconn(timeout=0.05)

        thread = threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=5)))
        thread.start()
        wait_waiting(pool, 1)
        with pytest.raises(TooManyRequests) as many_info:
            pool.getconn(timeout=5)
        pool.putconn(held)
        thread.join(5)
    finally:
        pool.close()
    with pytest.raises(PoolClosed) as closed_info:
        pool.getconn(timeout=0.05)
    for info in (timeout_info, many_info, closed_info):
        assert isinstance(info.value, PoolError)
        assert isinstance(info.value, psycopg2.OperationalError)
    # Catching the driver's error catches the pool's.
    try:
        pool.getconn(timeout=0.05)
    except psycopg2.OperationalError:
        pass


# -- callables, resize -------------------------------------------------------------------------


def test_conninfo_and_kwargs_callables_called_at_every_connect(pg_server: Any, app_name: str):
    calls = {"conninfo": 0, "kwargs": 0}

    def conninfo() -> str:
        calls["conninfo"] += 1
        return pg_server.dsn

    def kwargs() -> dict[str, Any]:
        calls["kwargs"] += 1
        return {"application_name": app_name}

    with ConnectionPool(conninfo, kwargs=kwargs, min_size=2, max_size=3) as pool:
        pool.wait(timeout=5)
        assert pg_server.wait_count(app_name, 2) == 2  # kwargs were used
        conns = [pool.getconn(timeout=5) for _ in range(3)]
        assert calls == {"conninfo": 3, "kwargs": 3}
        pg_server.terminate(app_name)
        for conn in conns:
            conn.close()
            pool.putconn(conn)
        pool.wait(timeout=5)
        assert wait_until(lambda: calls["conninfo"] >= 5)
        assert calls["kwargs"] == calls["conninfo"]
        assert pool.stats()["connections_num"] == calls["conninfo"]


def test_resize_up_and_down(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, max_idle=None) as pool:
        pool.wait(timeout=5)
        pool.resize(3, 5)
        assert (pool.min_size, pool.max_size) == (3, 5)
        pool.wait(timeout=5)
        assert pg_server.wait_count(app_name, 3) == 3
        conns = [pool.getconn(timeout=5) for _ in range(5)]  # up to the new max_size
        assert pg_server.wait_count(app_name, 5) == 5
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)

        pool.resize(1, 2)
        stats = pool.stats()
        assert (stats["pool_min"], stats["pool_max"]) == (1, 2)
        # Lent connections are closed as they come back, down to max_size.
        for conn in conns:
            pool.putconn(conn)
        assert pg_server.wait_count(app_name, 2) == 2
        assert pool.stats()["pool_size"] == 2
        held = [pool.getconn(timeout=5) for _ in range(2)]
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        for conn in held:
            pool.putconn(conn)


def test_resize_down_closes_idle_at_once(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=4, max_size=4, max_idle=None) as pool:
        pool.wait(timeout=5)
        pool.resize(1, 1)
        assert pg_server.wait_count(app_name, 1) == 1
        assert pool.stats()["pool_size"] == 1
