"""Defects found by the review of the pools: each test failed before its fix.

Every pool here is small and every wait bounded (a few seconds at most).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from _pg import PgServer

from psycopool import ConnectionPool


class Interrupt(BaseException):
    """Not an Exception: like KeyboardInterrupt, SystemExit or gevent's Timeout."""


def _settle(pool: ConnectionPool[Any], pg_server: PgServer, app_name: str) -> None:
    """The pool's books match the server's count once the connectors are done."""
    deadline = time.monotonic() + 5
    while True:
        stats = pool.get_stats()
        server = pg_server.count(app_name)
        if stats["pool_size"] == server and stats["requests_waiting"] == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"pool {stats} vs server {server}")
        time.sleep(0.02)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_return_interrupted_while_cleaning_frees_its_slot(
    dsn: str, pg_server: PgServer, app_name: str, driver: str
) -> None:
    """A BaseException inside the reset (a return's slow path) left the slot counted
    "pending" for ever: with max_size=1 the pool could never lend again."""
    calls = []

    def reset(conn: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Interrupt

    with ConnectionPool(dsn, min_size=0, max_size=1, reset=reset, driver=driver) as pool:
        conn = pool.getconn(timeout=5)
        with pytest.raises(Interrupt):
            pool.putconn(conn)
        assert conn.closed  # its state is unknown: closed, never lent again
        other = pool.getconn(timeout=3)
        assert other is not conn
        pool.putconn(other)
        _settle(pool, pg_server, app_name)


def test_dropin_return_interrupted_while_rolling_back_frees_its_slot(
    dsn: str, pg_server: PgServer, app_name: str
) -> None:
    """The drop-in's putconn of a dirty connection, interrupted in its rollback, kept
    the slot counted for ever: maxconn=1 then said "connection pool exhausted"."""
    import psycopg2.extensions

    from psycopool.pool import ThreadedConnectionPool

    interrupt = []

    class Conn(psycopg2.extensions.connection):
        def rollback(self) -> None:
            if interrupt:
                interrupt.clear()
                raise Interrupt
            super().rollback()

    pool = ThreadedConnectionPool(0, 1, dsn, connection_factory=Conn)
    try:
        conn = pool.getconn()
        conn.cursor().execute("SELECT 1")  # in a transaction: the return rolls back
        interrupt.append(1)
        with pytest.raises(Interrupt):
            pool.putconn(conn)
        assert conn.closed
        other = pool.getconn()
        pool.putconn(other)
        assert pg_server.wait_count(app_name, 0) == 0  # minconn=0: none kept
    finally:
        pool.closeall()


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_drain_during_check_replaces_the_connections_being_checked(
    dsn: str, pg_server: PgServer, app_name: str, driver: str
) -> None:
    """check() takes the idle connections off the stack to ping them; a drain() meanwhile
    did not see them, and check() put them back: a connection opened before drain() was
    lent after it. The ping is held up by stopping the connection's server process."""
    import os
    import signal
    import threading

    with ConnectionPool(dsn, min_size=1, max_size=1, timeout=10, driver=driver) as pool:
        pool.wait(5)
        (old_pid,) = pg_server.pids(app_name)
        os.kill(old_pid, signal.SIGSTOP)
        try:
            checker = threading.Thread(target=pool.check, daemon=True)
            checker.start()
            deadline = time.monotonic() + 5
            while pool.get_stats()["pool_available"]:  # taken off idle for its ping
                assert time.monotonic() < deadline
                time.sleep(0.01)
            pool.drain()
        finally:
            os.kill(old_pid, signal.SIGCONT)
        checker.join(10)
        assert not checker.is_alive()
        with pool.connection(timeout=5) as conn:
            cur = conn.cursor()
            cur.execute("SELECT pg_backend_pid()")
            row = cur.fetchone()
            assert row is not None
            assert row[0] != old_pid
        _settle(pool, pg_server, app_name)


def test_async_drain_during_check_replaces_the_connections_being_checked(
    dsn: str, pg_server: PgServer, app_name: str
) -> None:
    """The same race on AsyncConnectionPool."""
    import asyncio
    import os
    import signal

    from psycopool import AsyncConnectionPool

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, timeout=10) as pool:
            await pool.wait(5)
            (old_pid,) = pg_server.pids(app_name)
            os.kill(old_pid, signal.SIGSTOP)
            try:
                checker = asyncio.ensure_future(pool.check())
                deadline = time.monotonic() + 5
                while pool.get_stats()["pool_available"]:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                await pool.drain()
            finally:
                os.kill(old_pid, signal.SIGCONT)
            await asyncio.wait_for(checker, 10)
            async with pool.connection(timeout=5) as conn:
                cur = await conn.execute("SELECT pg_backend_pid()")
                row = await cur.fetchone()
                assert row is not None
                assert row[0] != old_pid

    asyncio.run(main())


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_close_in_block_with_close_returns_touches_no_later_loan(
    dsn: str, pg_server: PgServer, app_name: str, driver: str
) -> None:
    """With close_returns=True, conn.close() in `with pool.connection()` returns it; the
    block's end then committed on it and returned it again (ValueError), even when another
    borrower held it by then: its transaction was committed under it."""
    import threading

    with ConnectionPool(
        dsn, min_size=1, max_size=1, close_returns=True, driver=driver, timeout=5
    ) as pool:
        pool.wait(5)
        other: list[Any] = []
        with pool.connection() as conn:
            conn.close()  # back to the pool, still open
            assert not conn.closed
            t = threading.Thread(target=lambda: other.append(pool.getconn()))
            t.start()
            t.join(5)
            (taken,) = other
            assert taken is conn
            taken.cursor().execute("CREATE TEMP TABLE t_review (x int)")  # in a transaction
        # The block ended quietly and left the other borrower's transaction open.
        assert pool.get_stats()["connections_in_use"] == 1
        taken.rollback()
        cur = taken.cursor()
        cur.execute("SELECT to_regclass('pg_temp.t_review')")
        row = cur.fetchone()
        assert row is not None and row[0] is None  # rolled back: never committed
        taken.rollback()
        done = threading.Thread(target=pool.putconn, args=(taken,))
        done.start()
        done.join(5)
        _settle(pool, pg_server, app_name)


def test_async_close_in_block_with_close_returns_touches_no_later_loan(
    dsn: str, pg_server: PgServer, app_name: str
) -> None:
    """The same on AsyncConnectionPool: the block's end returned the connection a second
    time, ending the loan of the task that had borrowed it since (then lent twice)."""
    import asyncio

    from psycopool import AsyncConnectionPool

    async def main() -> None:
        async with AsyncConnectionPool(
            dsn, min_size=1, max_size=1, close_returns=True, timeout=5
        ) as pool:
            await pool.wait(5)
            async with pool.connection() as conn:
                await conn.close()  # back to the pool, still open
                assert not conn.closed
                taken = await pool.getconn()
                assert taken is conn
            assert pool.get_stats()["connections_in_use"] == 1  # still the second loan's
            await pool.putconn(taken)

    asyncio.run(main())


def test_connector_survives_a_base_exception_from_configure(
    dsn: str, pg_server: PgServer, app_name: str
) -> None:
    """A BaseException from configure ended the connector thread without giving back its
    place: with num_workers=1 no connection was ever opened again (every borrow timed out)."""
    calls = []

    def configure(conn: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Interrupt

    with ConnectionPool(
        dsn, min_size=0, max_size=1, num_workers=1, configure=configure, timeout=5
    ) as pool:
        with pool.connection(timeout=5):
            pass
        assert len(calls) == 2
        _settle(pool, pg_server, app_name)
