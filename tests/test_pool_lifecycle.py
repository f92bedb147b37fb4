"""ConnectionPool's life cycle: open, close (bounded, with loans out, with waiters)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _modern import query, wait_until, wait_waiting

from psycopool import ConnectionPool, PoolClosed

# -- life cycle ----------------------------------------------------------------------------


def test_context_manager_opens_min_size_and_closes_all(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=2, max_size=3) as pool:
        assert not pool.closed
        pool.wait(timeout=5)
        assert pg_server.wait_count(app_name, 2) == 2
        with pool.connection() as conn:
            assert query(conn, "SELECT 1") == 1
    assert pool.closed
    assert pg_server.wait_count(app_name, 0) == 0
    with pytest.raises(PoolClosed):
        pool.getconn(timeout=0.1)


def test_open_false_then_open(pg_server: Any, app_name: str, dsn: str):
    pool = ConnectionPool(dsn, min_size=1, open=False)
    try:
        assert pool.closed
        time.sleep(0.1)
        assert pg_server.count(app_name) == 0  # nothing opened before open()
        with pytest.raises(PoolClosed, match="not open"):
            pool.getconn(timeout=0.1)
        pool.open(wait=True, timeout=5)
        assert not pool.closed
        assert pg_server.wait_count(app_name, 1) == 1
        pool.open()  # opening an open pool does nothing
        assert pool.stats()["pool_size"] == 1
    finally:
        pool.close()
    with pytest.raises(PoolClosed, match="closed"):
        pool.open()
    pool.close()  # closing twice is fine


def test_close_leaves_zero_server_connections(pg_server: Any, app_name: str, dsn: str):
    pool = ConnectionPool(dsn, min_size=3, max_size=5)
    try:
        pool.wait(timeout=5)
        conns = [pool.getconn() for _ in range(5)]
        for conn in conns[:2]:
            pool.putconn(conn)
        assert pg_server.wait_count(app_name, 5) == 5
    finally:
        pool.close(timeout=0.2)  # three still lent
    assert pg_server.wait_count(app_name, 0) == 0
    assert all(conn.closed for conn in conns[2:])


def test_close_waits_for_a_connection_returned_within_timeout(
    pg_server: Any, app_name: str, dsn: str
):
    pool = ConnectionPool(dsn, min_size=1, max_size=1)
    conn = pool.getconn(timeout=5)
    errors: list[BaseException] = []

    def give_back() -> None:
        time.sleep(0.2)
        try:
            pool.putconn(conn)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=give_back)
    thread.start()
    pool.close(timeout=5)
    thread.join()
    assert errors == []
    assert conn.closed
    assert pg_server.wait_count(app_name, 0) == 0


def test_close_timeout_bounds_the_whole_close(pg_server: Any, app_name: str, dsn: str):
    """close(timeout) waits ``timeout`` in all, not once for loans and again for its threads.

    Regression: a connector stuck connecting (here in the conninfo callable) made close()
    wait ``timeout`` for the lent connection, then ``timeout`` again for the connector.
    """
    gate = threading.Event()
    calls = [0]

    def conninfo() -> str:
        calls[0] += 1
        if calls[0] > 1:
            gate.wait(30)  # the second connector is stuck until the test ends
        return dsn

    pool = ConnectionPool(conninfo, min_size=2, max_size=2)
    try:
        wait_until(lambda: calls[0] == 2)
        held = pool.getconn(timeout=5)
        started = time.monotonic()
        pool.close(timeout=2.0)
        took = time.monotonic() - started
        assert held.closed
        assert took < 3.0, f"close(timeout=2.0) took {took:.1f} s"  # it was 4 s and more
    finally:
        gate.set()
    # The connector, unstuck, closes what it opens: nothing is left on the server.
    assert pg_server.wait_count(app_name, 0) == 0


def test_connection_returned_after_close_timeout_is_closed_quietly(
    pg_server: Any, app_name: str, dsn: str
):
    """Regression: putconn used to raise ValueError ('was not lent by pool') here."""
    pool = ConnectionPool(dsn, min_size=1, max_size=1)
    try:
        conn = pool.getconn(timeout=5)
        pool.close(timeout=0.05)
        assert conn.closed
        assert pg_server.wait_count(app_name, 0) == 0
        pool.putconn(conn)  # no error
    finally:
        pool.close()


def test_connection_block_outliving_close_raises_pool_closed(dsn: str):
    """The block's work was not committed: the caller must hear of it, as PoolClosed."""
    pool = ConnectionPool(dsn, min_size=1, max_size=1)
    try:
        with pytest.raises(PoolClosed, match="not committed"):
            with pool.connection(timeout=5) as conn:
                pool.close(timeout=0.05)
        assert conn.closed
    finally:
        pool.close()


def test_close_right_after_open_never_raises(dsn: str):
    """Regression: close() joined connector threads not started yet (RuntimeError)."""
    for _ in range(200):
        pool = ConnectionPool(dsn, min_size=1, max_size=2)
        pool.close()


def test_waiters_get_pool_closed_when_the_pool_closes(dsn: str):
    pool = ConnectionPool(dsn, min_size=1, max_size=1)
    errors: list[BaseException] = []
    try:
        held = pool.getconn(timeout=5)

        def wait_for_one() -> None:
            try:
                pool.getconn(timeout=10)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=wait_for_one)
        thread.start()
        wait_waiting(pool, 1)
        started = time.monotonic()
        pool.close(timeout=0.1)
        thread.join(5)
        assert time.monotonic() - started < 3
        assert len(errors) == 1 and isinstance(errors[0], PoolClosed)
        assert held.closed
    finally:
        pool.close()
