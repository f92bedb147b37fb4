"""A return is matched to its loan, not only to the connection object (issue 13, bug 1).

Both front doors: a second putconn while another thread waits, and a late
stale return of a connection lent meanwhile to another thread, are refused
without touching the books; a return on another thread's behalf still works.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _dropin import backend_pid
from _modern import pid_of, wait_waiting

from psycopool import ConnectionPool, PoolTimeout, pool


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Borrower:
    """A thread that borrows with ``get`` and keeps the connection until told to return it."""

    def __init__(self, get: Callable[[], Any], put: Callable[[Any], None]) -> None:
        self.conn: Any = None
        self.got = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                self.conn = get()
                self.got.set()
                if self.release.wait(10):
                    put(self.conn)
            except BaseException as exc:
                self.errors.append(exc)
                self.got.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert not self.errors, self.errors


@pytest.fixture
def modern(pg_server: Any, dsn: str, driver: str) -> Iterator[ConnectionPool[Any]]:
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver) as p:
        p.wait(10)
        yield p


def test_second_putconn_while_a_thread_waits_is_refused(modern: ConnectionPool[Any]):
    conn = modern.getconn(timeout=5)
    waiter = Borrower(lambda: modern.getconn(timeout=10), modern.putconn)
    wait_waiting(modern, 1)
    modern.putconn(conn)  # handed to the waiter
    with pytest.raises(ValueError, match="already returned"):
        modern.putconn(conn)  # in transit or lent to the waiter: not ours to return
    assert waiter.got.wait(10)
    assert waiter.conn is conn
    stats = modern.stats()
    assert stats["connections_in_use"] == 1 and stats["pool_available"] == 0
    with pytest.raises(PoolTimeout):  # still lent to the waiter only
        modern.getconn(timeout=0.1)
    pid_of(waiter.conn)  # the waiter's connection is intact
    waiter.finish()
    with modern.connection(timeout=5) as again:  # books right: the one slot is back
        assert again is conn
    assert modern.stats()["pool_size"] == 1


def test_late_stale_return_of_a_relent_connection_is_refused(modern: ConnectionPool[Any]):
    conn = modern.getconn(timeout=5)
    modern.putconn(conn)
    other = Borrower(lambda: modern.getconn(timeout=10), modern.putconn)
    assert other.got.wait(10) and other.conn is conn
    with pytest.raises(ValueError, match="already returned"):
        modern.putconn(conn)  # a stale second return: the connection is the other's now
    assert modern.stats()["connections_in_use"] == 1
    with pytest.raises(PoolTimeout):  # not lent twice
        modern.getconn(timeout=0.1)
    other.finish()
    assert modern.stats()["connections_in_use"] == 0


def test_return_on_another_threads_behalf_works(modern: ConnectionPool[Any]):
    # Borrowed in a thread, returned by this one, while the borrower still runs.
    borrower = Borrower(lambda: modern.getconn(timeout=10), lambda conn: None)
    assert borrower.got.wait(10)
    modern.putconn(borrower.conn)
    assert modern.stats()["connections_in_use"] == 0
    borrower.finish()
    # And again, with the same connection, by the thread that borrowed it now.
    conn = modern.getconn(timeout=5)
    modern.putconn(conn)
    # The ambiguous case is told apart once the borrower has ended:
    ended = Borrower(lambda: modern.getconn(timeout=10), lambda conn: None)
    ended.finish()
    modern.putconn(ended.conn)  # this thread returned it last, but its borrower is gone
    assert modern.stats()["connections_in_use"] == 0


def test_many_threads_double_returns_never_share_a_connection(modern: ConnectionPool[Any]):
    """Threads that return twice while others wait: refused every time, books stay right."""
    modern.resize(2, 2)
    modern.wait(10)
    owners: dict[int, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    refused = [0]

    def work() -> None:
        try:
            for _ in range(30):
                conn = modern.getconn(timeout=10)
                with lock:
                    assert id(conn) not in owners, "lent twice"
                    owners[id(conn)] = threading.get_ident()
                pid_of(conn)
                with lock:
                    del owners[id(conn)]
                modern.putconn(conn)
                try:
                    modern.putconn(conn)
                except ValueError:
                    with lock:
                        refused[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors[:3]
    assert refused[0] == 6 * 30
    stats = modern.stats()
    assert stats["connections_in_use"] == 0 and stats["pool_size"] == 2


def test_dropin_late_stale_return_is_refused(pg_server: Any, dsn: str):
    p = pool.ThreadedConnectionPool(1, 1, dsn)
    try:
        conn = p.getconn()
        p.putconn(conn)
        other = Borrower(p.getconn, p.putconn)
        assert other.got.wait(10) and other.conn is conn
        with pytest.raises(pool.PoolError, match="unkeyed"):
            p.putconn(conn)  # stale: lent to the other thread now
        with pytest.raises(pool.PoolError, match="exhausted"):
            p.getconn()  # still lent once, to the other thread
        backend_pid(other.conn)
        other.finish()
        # A key matches a return exactly: this thread returned it last, and
        # returns it now on behalf of a borrower still running.
        keyed = Borrower(lambda: p.getconn("k"), lambda conn: None)
        assert keyed.got.wait(10) and keyed.conn is conn
        p.putconn(conn, key="k")
        keyed.finish()
        assert p.getconn() is conn
    finally:
        p.closeall()


def test_dropin_return_on_another_threads_behalf_works(pg_server: Any, dsn: str):
    p = pool.ThreadedConnectionPool(1, 1, dsn)
    try:
        borrower = Borrower(p.getconn, lambda conn: None)
        assert borrower.got.wait(10)
        p.putconn(borrower.conn)
        borrower.finish()
        p.putconn(p.getconn())
    finally:
        p.closeall()
