"""ConnectionPool waiting: FIFO order, timeout precision, max_waiting, no double lending, growth."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from _modern import hanging_server, pid_of, query, wait_until, wait_waiting

from psycopool import ConnectionPool, PoolTimeout, TooManyRequests

#: Slack allowed over a timeout: generous, the promise is "a few milliseconds".
SLACK = 0.1


def test_waiters_are_served_in_fifo_order(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        pool.wait(timeout=5)
        held = pool.getconn(timeout=5)
        queued = pool.stats()["requests_queued"]
        order: list[int] = []
        lock = threading.Lock()

        def borrow(i: int) -> None:
            conn = pool.getconn(timeout=10)
            with lock:
                order.append(i)
            pool.putconn(conn)

        threads = []
        for i in range(6):
            thread = threading.Thread(target=borrow, args=(i,))
            thread.start()
            threads.append(thread)
            wait_waiting(pool, i + 1)  # queued before the next one starts
        pool.putconn(held)
        for thread in threads:
            thread.join(10)
        assert order == list(range(6))
        assert pool.stats()["requests_queued"] == queued + 6


def test_returned_connection_goes_to_waiter_not_to_a_newcomer(dsn: str):
    """No barging: a getconn arriving after the waiter can't take the returned connection."""
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        held = pool.getconn(timeout=5)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(pool.getconn(timeout=10)))
        thread.start()
        wait_waiting(pool, 1)
        pool.putconn(held)
        # The connection was handed over inside putconn: nothing is idle for a newcomer.
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.1)
        thread.join(5)
        assert got == [held]
        pool.putconn(got[0])


@pytest.mark.parametrize("timeout", [0.05, 0.3])
def test_getconn_timeout_precision(dsn: str, timeout: float):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        held = pool.getconn(timeout=5)
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match="couldn't get a connection"):
            pool.getconn(timeout=timeout)
        elapsed = time.monotonic() - started
        assert timeout - 0.01 <= elapsed < timeout + SLACK
        assert pool.stats()["requests_waiting"] == 0  # the waiter left the queue
        pool.putconn(held)
        # And the pool still works.
        with pool.connection(timeout=1) as conn:
            assert conn is held


def test_pool_default_timeout_and_connection_timeout(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=0.2) as pool:
        held = pool.getconn()
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.getconn()
        assert 0.19 <= time.monotonic() - started < 0.2 + SLACK
        started = time.monotonic()
        with pytest.raises(PoolTimeout):
            with pool.connection(timeout=0.1):
                pass
        assert 0.09 <= time.monotonic() - started < 0.1 + SLACK
        pool.putconn(held)


def test_max_waiting_raises_too_many_requests_at_once(dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, max_waiting=2) as pool:
        held = pool.getconn(timeout=5)
        threads = [
            threading.Thread(target=lambda: pool.putconn(pool.getconn(timeout=10)))
            for _ in range(2)
        ]
        for i, thread in enumerate(threads):
            thread.start()
            wait_waiting(pool, i + 1)
        errors_before = pool.stats()["requests_errors"]
        started = time.monotonic()
        with pytest.raises(TooManyRequests, match="2 requests waiting"):
            pool.getconn(timeout=10)
        assert time.monotonic() - started < 1.0  # at once, not after the 10 s timeout
        assert pool.stats()["requests_errors"] == errors_before + 1
        assert pool.stats()["requests_waiting"] == 2
        pool.putconn(held)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        # Once the queue drains there is room again.
        with pool.connection(timeout=1) as conn:
            assert query(conn, "SELECT 1") == 1


def test_stress_no_connection_lent_twice_and_server_count_bounded(
    pg_server: Any, app_name: str, dsn: str
):
    max_size, n_threads, n_borrows = 4, 16, 150
    owners: dict[int, int] = {}  # id(conn) -> thread ident
    pid_owners: dict[int, int] = {}  # backend pid -> thread ident
    lock = threading.Lock()
    failures: list[str] = []
    counts: list[int] = []
    done = threading.Event()

    with ConnectionPool(dsn, min_size=1, max_size=max_size, timeout=20) as pool:

        def worker() -> None:
            me = threading.get_ident()
            try:
                for i in range(n_borrows):
                    conn = pool.getconn()
                    try:
                        pid = pid_of(conn)
                        with lock:
                            if id(conn) in owners or pid in pid_owners:
                                failures.append(f"conn {id(conn):#x} / pid {pid} lent twice")
                            owners[id(conn)] = me
                            pid_owners[pid] = me
                        if i % 7 == 0:
                            time.sleep(0.001)
                        with lock:
                            if owners.get(id(conn)) != me or pid_owners.get(pid) != me:
                                failures.append(f"conn {id(conn):#x} taken while lent")
                            del owners[id(conn)]
                            del pid_owners[pid]
                    finally:
                        pool.putconn(conn)
            except BaseException as exc:
                failures.append(repr(exc))

        def sampler() -> None:
            while not done.is_set():
                counts.append(pg_server.count(app_name))
                time.sleep(0.005)

        watch = threading.Thread(target=sampler)
        watch.start()
        threads = [threading.Thread(target=worker) for _ in range(n_threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        done.set()
        watch.join(5)

        assert failures == []
        assert counts and max(counts) <= max_size
        stats = pool.stats()
        assert stats["requests_num"] == n_threads * n_borrows
        assert stats["connections_in_use"] == 0
        assert stats["pool_size"] <= max_size
        assert stats["connections_num"] <= max_size  # nothing was lost, nothing reopened
        assert pg_server.count(app_name) <= max_size
    assert pg_server.wait_count(app_name, 0) == 0


@pytest.mark.parametrize("min_size", [0, 1])
def test_getconn_timeout_holds_when_server_hangs_on_connect(min_size: int):
    with hanging_server() as (host, port):
        pool = ConnectionPool(
            f"host={host} port={port} dbname=x user=x connect_timeout=3",
            min_size=min_size,
            max_size=2,
        )
        try:
            for timeout in (0.3, 0.1):
                started = time.monotonic()
                with pytest.raises(PoolTimeout):
                    pool.getconn(timeout=timeout)
                assert time.monotonic() - started < timeout + SLACK
        finally:
            started = time.monotonic()
            pool.close(timeout=0.2)
            assert time.monotonic() - started < 1.0


def test_pool_grows_under_load_and_keeps_connections(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=8) as pool:
        pool.wait(timeout=5)
        assert pg_server.count(app_name) == 1
        barrier = threading.Barrier(8, timeout=10)
        pids: list[int] = []
        errors: list[BaseException] = []

        def hold() -> None:
            try:
                with pool.connection(timeout=10) as conn:
                    pids.append(pid_of(conn))
                    barrier.wait()  # all eight hold one at the same time
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=hold) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
        assert errors == []
        assert len(set(pids)) == 8
        stats = pool.stats()
        assert stats["pool_size"] == 8
        assert stats["pool_available"] == 8
        assert stats["connections_num"] == 8
        # Kept after the burst (max_idle is 10 minutes by default).
        time.sleep(0.3)
        assert pg_server.count(app_name) == 8
        assert pool.stats()["pool_size"] == 8


def test_waiter_served_by_new_connection_when_below_max(dsn: str):
    with ConnectionPool(dsn, min_size=0, max_size=2) as pool:
        a = pool.getconn(timeout=5)
        b = pool.getconn(timeout=5)  # opened on demand for the waiter
        assert a is not b
        assert wait_until(lambda: pool.stats()["pool_size"] == 2)
        pool.putconn(a)
        pool.putconn(b)
