"""ConnectionPool time rules with an injected clock: max_idle, max_lifetime, leak_timeout.

``pool.check()`` runs one upkeep pass at once (expiry, recycling, leak reports, refill), so no
test sleeps for an age to pass: the fake clock is advanced instead.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
from _modern import FakeClock, clocked, pid_of, query, wait_until

from psycopool import ConnectionPool, PoolTimeout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _fill(pool: ConnectionPool, n: int) -> list[int]:
    """Have ``n`` connections lent at once, then return them; their pids."""
    conns = [pool.getconn(timeout=5) for _ in range(n)]
    pids = [pid_of(c) for c in conns]
    for c in conns:
        pool.putconn(c)
    return pids


# -- max_idle ----------------------------------------------------------------------------------


def test_max_idle_closes_connections_above_min_size_only(
    pg_server: Any, app_name: str, dsn: str, clock: FakeClock
):
    pool = clocked(clock)(dsn, min_size=1, max_size=3, max_idle=10, max_lifetime=None)
    try:
        pool.wait(timeout=5)
        _fill(pool, 3)
        assert pg_server.count(app_name) == 3

        clock.advance(9)  # not idle long enough yet
        pool.check()
        assert pool.stats()["connections_idle_closed"] == 0
        assert pool.stats()["pool_size"] == 3

        clock.advance(11)  # over max_idle (even counting from the check above)
        pool.check()
        assert pool.stats()["connections_idle_closed"] == 2
        assert pg_server.wait_count(app_name, 1) == 1
        assert pool.stats()["pool_size"] == 1

        clock.advance(1000)  # never below min_size
        pool.check()
        assert pool.stats()["connections_idle_closed"] == 2
        assert pool.stats()["pool_size"] == 1
        assert pg_server.count(app_name) == 1
    finally:
        pool.close()


def test_check_does_not_reset_idle_age(pg_server: Any, app_name: str, dsn: str, clock: FakeClock):
    pool = clocked(clock)(dsn, min_size=1, max_size=3, max_idle=10, max_lifetime=None)
    try:
        pool.wait(timeout=5)
        _fill(pool, 3)
        clock.advance(9)
        pool.check()  # a health check is not a use
        clock.advance(2)  # 11 s since the connections were last used
        pool.check()
        assert pool.stats()["connections_idle_closed"] == 2
        assert pg_server.wait_count(app_name, 1) == 1
    finally:
        pool.close()


def test_max_idle_spares_lent_connections(
    pg_server: Any, app_name: str, dsn: str, clock: FakeClock
):
    pool = clocked(clock)(dsn, min_size=0, max_size=2, max_idle=10, max_lifetime=None)
    try:
        held = pool.getconn(timeout=5)
        other = pool.getconn(timeout=5)
        pool.putconn(other)
        clock.advance(60)
        pool.check()
        assert pg_server.wait_count(app_name, 1) == 1  # the idle one went
        assert query(held, "SELECT 1") == 1  # the lent one is untouched
        pool.putconn(held)
        assert pool.stats()["pool_available"] == 1  # and kept on return (idle from now)
    finally:
        pool.close()


# -- max_lifetime ------------------------------------------------------------------------------


def test_max_lifetime_recycles_idle_with_jitter(
    pg_server: Any, app_name: str, dsn: str, clock: FakeClock
):
    n = 8
    pool = clocked(clock)(dsn, min_size=n, max_size=n, max_idle=None, max_lifetime=100)
    try:
        pool.wait(timeout=5)
        original = set(pg_server.pids(app_name))
        assert len(original) == n

        clock.advance(89.9)  # before 0.9 x max_lifetime: nobody expires
        pool.check()
        assert pool.stats()["connections_recycled"] == 0
        assert set(pg_server.pids(app_name)) == original

        steps_with_recycling = 0
        recycled = 0
        for _ in range(21):  # 90.4 .. 100.4, in half seconds
            clock.advance(0.5)
            pool.check()
            now = pool.stats()["connections_recycled"]
            steps_with_recycling += now > recycled
            recycled = now
        assert recycled == n  # all expired by 1.0 x max_lifetime
        assert steps_with_recycling >= 2  # not all at once: jitter
        pool.wait(timeout=5)
        assert pg_server.wait_count(app_name, n) == n
        assert not set(pg_server.pids(app_name)) & original
    finally:
        pool.close()


def test_max_lifetime_never_while_lent(pg_server: Any, app_name: str, dsn: str, clock: FakeClock):
    pool = clocked(clock)(dsn, min_size=1, max_size=1, max_idle=None, max_lifetime=100)
    try:
        conn = pool.getconn(timeout=5)
        pid = pid_of(conn)
        clock.advance(150)
        pool.check()
        assert query(conn, "SELECT 1") == 1  # still open, still the same session
        assert pid_of(conn) == pid
        assert pool.stats()["connections_recycled"] == 0
        pool.putconn(conn)  # past its lifetime: closed on return
        assert conn.closed
        assert pool.stats()["connections_recycled"] == 1
        assert wait_until(lambda: pid not in pg_server.pids(app_name))
        with pool.connection(timeout=5) as conn2:
            assert pid_of(conn2) != pid
    finally:
        pool.close()


def test_expired_idle_connection_is_not_lent(
    pg_server: Any, app_name: str, dsn: str, clock: FakeClock
):
    """Even before an upkeep pass, getconn doesn't hand out a connection past its lifetime."""
    pool = clocked(clock)(dsn, min_size=1, max_size=1, max_idle=None, max_lifetime=100)
    try:
        with pool.connection(timeout=5) as conn:
            pid = pid_of(conn)
        clock.advance(101)
        with pool.connection(timeout=5) as conn2:
            assert pid_of(conn2) != pid
        assert pool.stats()["connections_recycled"] == 1
    finally:
        pool.close()


# -- leaks -------------------------------------------------------------------------------------


def borrow_and_keep_for_the_leak_test(pool: ConnectionPool) -> Any:
    return pool.getconn(timeout=5)


def test_leak_timeout_logs_borrower_stack(
    dsn: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="psycopool")
    pool = clocked(clock)(dsn, min_size=1, max_size=1, leak_timeout=5)
    try:
        pool.wait(timeout=5)
        conn = borrow_and_keep_for_the_leak_test(pool)

        def leak_records() -> list[logging.LogRecord]:
            return [
                r
                for r in caplog.records
                if r.name == "psycopool" and "borrow_and_keep_for_the_leak_test" in r.getMessage()
            ]

        clock.advance(4)
        pool.check()
        assert leak_records() == []
        assert pool.stats()["leaks_detected"] == 0

        clock.advance(2)
        pool.check()
        records = leak_records()
        assert len(records) == 1
        assert records[0].levelno == logging.WARNING
        assert "test_leak_timeout_logs_borrower_stack" in records[0].getMessage()
        assert pool.stats()["leaks_detected"] == 1

        clock.advance(60)
        pool.check()
        assert len(leak_records()) == 1  # reported once per loan
        pool.putconn(conn)
    finally:
        pool.close()


def test_no_leak_report_for_returned_connections(
    dsn: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="psycopool")
    pool = clocked(clock)(dsn, min_size=1, max_size=1, leak_timeout=5)
    try:
        with pool.connection(timeout=5):
            clock.advance(1)
        clock.advance(60)
        pool.check()
        assert pool.stats()["leaks_detected"] == 0
        assert not [r for r in caplog.records if "lent for" in r.getMessage()]
    finally:
        pool.close()


def test_dropped_connection_frees_its_slot(
    pg_server: Any, app_name: str, dsn: str, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="psycopool")
    with ConnectionPool(dsn, min_size=0, max_size=1) as pool:
        conn = pool.getconn(timeout=5)
        pid = pid_of(conn)
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.05)
        del conn
        gc.collect()
        pool.check()
        stats = pool.stats()
        assert stats["connections_in_use"] == 0
        assert stats["connections_dropped"] == 1
        # Logged by whichever thread reclaimed it: check(), or the upkeep thread just before.
        assert wait_until(
            lambda: any("garbage-collected" in r.getMessage() for r in caplog.records), 5
        )
        with pool.connection(timeout=5) as conn2:
            assert pid_of(conn2) != pid
        assert pg_server.wait_count(app_name, 1) == 1
