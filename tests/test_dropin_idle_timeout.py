"""``idle_timeout`` (0 / None / T > 0), ``prune()`` and the refill to ``minconn`` (COMPAT.md).

Ages come from an injected clock (a subclass with ``clock = staticmethod(fake)``): no sleeping,
except one short real-time test proving the default clock is wall-monotonic, not CPU time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from _dropin import (
    FakeClock,
    PoolFactory,
    backend_pid,
    both_pools,
    select_one,
    wait_readable,
    with_clock,
)

from psycopool import pool


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _cycle(p: Any, n: int) -> list[Any]:
    """Check out ``n`` connections (running a query on each), return them in order; them."""
    conns = [p.getconn() for _ in range(n)]
    for c in conns:
        select_one(c)
    for c in conns:
        p.putconn(c)
    return conns


def _pids(pg_server: Any, app_name: str) -> set[int]:
    return set(pg_server.pids(app_name))


# -- idle_timeout=0: psycopg2's behaviour ------------------------------------------------------


@both_pools
def test_zero_keeps_only_minconn_idle(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 2, 5, dsn)  # idle_timeout=0 is the default
    conns = [p.getconn() for _ in range(4)]
    pids = [backend_pid(c) for c in conns]
    for c in conns:
        p.putconn(c)
    # The first two returned filled the idle list up to minconn; the other two were closed.
    assert [c.closed for c in conns] == [0, 0, 1, 1]
    assert pg_server.wait_count(app_name, 2) == 2
    assert _pids(pg_server, app_name) == set(pids[:2])


@both_pools
def test_zero_prune_keeps_the_floor(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 2, 5, dsn, idle_timeout=0)
    before = _pids(pg_server, app_name)
    assert len(before) == 2
    clock.advance(10**6)
    p.prune()
    assert _pids(pg_server, app_name) == before
    a, b = p.getconn(), p.getconn()
    assert {backend_pid(a), backend_pid(b)} == before


# -- idle_timeout=None: keep everything --------------------------------------------------------


@both_pools
def test_none_keeps_every_returned_connection(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 1, 5, dsn, idle_timeout=None)
    conns = _cycle(p, 4)
    assert not any(c.closed for c in conns)
    before = _pids(pg_server, app_name)
    assert len(before) == 4
    clock.advance(10**6)
    p.prune()
    assert _pids(pg_server, app_name) == before
    clock.advance(10**6)
    again = [p.getconn() for _ in range(4)]
    assert {backend_pid(c) for c in again} == before


# -- idle_timeout=T > 0 ------------------------------------------------------------------------


@both_pools
def test_t_keeps_returned_connections_until_they_expire(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 1, 5, dsn, idle_timeout=10)
    conns = _cycle(p, 3)
    assert not any(c.closed for c in conns)
    before = _pids(pg_server, app_name)
    assert len(before) == 3
    clock.advance(5)
    p.prune()
    assert _pids(pg_server, app_name) == before
    clock.advance(5)  # exactly T: not *more* than T
    p.prune()
    assert _pids(pg_server, app_name) == before
    clock.advance(0.5)
    p.prune()
    # Expired down to the floor; the survivor is an old connection, not a new one.
    assert pg_server.wait_count(app_name, 1) == 1
    assert _pids(pg_server, app_name) < before
    assert sum(1 for c in conns if c.closed) == 2
    survivor = p.getconn()
    assert not survivor.closed
    assert backend_pid(survivor) in before


@both_pools
def test_t_nothing_expires_without_a_call(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    threads_before = threading.active_count()
    p = make_pool(with_clock(pool_cls, clock), 1, 5, dsn, idle_timeout=10)
    conns = _cycle(p, 3)
    assert threading.active_count() == threads_before  # no background thread
    clock.advance(100)
    time.sleep(0.05)
    assert pg_server.count(app_name) == 3
    assert not any(c.closed for c in conns)


@both_pools
def test_t_expires_lazily_in_getconn(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 1, 5, dsn, idle_timeout=10)
    conns = _cycle(p, 3)
    before = _pids(pg_server, app_name)
    clock.advance(11)
    got = p.getconn()
    assert select_one(got) == 1
    assert backend_pid(got) in before  # the warmest one is reused, not a new connection
    assert pg_server.wait_count(app_name, 1) == 1
    assert sum(1 for c in conns if c.closed) == 2


@both_pools
def test_t_expires_lazily_in_putconn(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 1, 5, dsn, idle_timeout=10)
    a, b, c = p.getconn(), p.getconn(), p.getconn()
    pid_c = backend_pid(c)
    c.rollback()
    p.putconn(a)
    p.putconn(b)
    clock.advance(11)
    p.putconn(c)  # a and b are now idle for 11 s; c for 0 s
    assert a.closed and b.closed
    assert not c.closed
    assert pg_server.wait_count(app_name, 1) == 1
    assert _pids(pg_server, app_name) == {pid_c}


@both_pools
def test_t_use_resets_the_idle_age(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 0, 5, dsn, idle_timeout=10)
    a, b = p.getconn(), p.getconn()
    pid_b = backend_pid(b)
    b.rollback()
    p.putconn(a)
    p.putconn(b)
    clock.advance(8)
    assert p.getconn() is b  # LIFO: b, used again at t=8
    p.putconn(b)
    clock.advance(4)  # a idle 12 s, b idle 4 s
    p.prune()
    assert a.closed
    assert not b.closed
    assert pg_server.wait_count(app_name, 1) == 1
    assert _pids(pg_server, app_name) == {pid_b}


@both_pools
def test_t_floor_counts_checked_out_connections(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 2, 5, dsn, idle_timeout=10)
    conns = [p.getconn() for _ in range(4)]
    for c in conns[1:]:
        p.putconn(c)
    held = conns[0]
    clock.advance(11)
    p.prune()
    # idle + checked out == minconn: one idle stays, with the held one.
    assert pg_server.wait_count(app_name, 2) == 2
    assert not held.closed
    assert sum(1 for c in conns[1:] if c.closed) == 2
    clock.advance(100)
    p.prune()
    assert pg_server.count(app_name) == 2
    assert select_one(held) == 1


@both_pools
def test_t_floor_never_expires(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(with_clock(pool_cls, clock), 3, 5, dsn, idle_timeout=1)
    before = _pids(pg_server, app_name)
    for _ in range(3):
        clock.advance(1000)
        p.prune()
        assert _pids(pg_server, app_name) == before
    clock.advance(1000)
    conns = [p.getconn() for _ in range(3)]
    assert {backend_pid(c) for c in conns} == before


def test_default_clock_is_monotonic() -> None:
    assert pool.SimpleConnectionPool.clock is time.monotonic
    assert pool.ThreadedConnectionPool.clock is time.monotonic


@both_pools
def test_real_time_ages_connections_while_the_process_sleeps(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    # Pull request 974 measured CPU time: a sleeping process never aged its connections.
    p = make_pool(pool_cls, 0, 3, dsn, idle_timeout=0.05)
    conns = _cycle(p, 2)
    assert pg_server.count(app_name) == 2
    time.sleep(0.2)
    p.prune()
    assert all(c.closed for c in conns)
    assert pg_server.wait_count(app_name, 0) == 0


# -- refill to minconn after putconn and prune -------------------------------------------------


@both_pools
@pytest.mark.parametrize("idle_timeout", [0, None, 10])
def test_refill_after_putconn_close(
    pool_cls: type[Any],
    idle_timeout: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 2, 5, dsn, idle_timeout=idle_timeout)
    a, b = p.getconn(), p.getconn()
    old = {backend_pid(a), backend_pid(b)}
    p.putconn(a, close=True)
    # b is still out: one new connection brings idle + checked out back to 2.
    assert pg_server.wait_count(app_name, 2) == 2
    p.putconn(b, close=True)
    assert pg_server.wait_count(app_name, 2) == 2
    new = _pids(pg_server, app_name)
    assert not new & old
    x, y = p.getconn(), p.getconn()
    assert {backend_pid(x), backend_pid(y)} == new
    assert pg_server.count(app_name) == 2


@both_pools
def test_refill_after_user_closed_connection_is_returned(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 3, dsn)
    conn = p.getconn()
    conn.close()
    p.putconn(conn)
    assert pg_server.wait_count(app_name, 1) == 1
    fresh = p.getconn()
    assert fresh is not conn
    assert select_one(fresh) == 1


@both_pools
def test_prune_drops_dead_idle_connections_and_refills(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 2, 5, dsn, idle_timeout=None)
    conns = _cycle(p, 3)
    old = _pids(pg_server, app_name)
    assert pg_server.terminate(app_name) == 3
    wait_readable(*conns)
    p.prune()
    assert all(c.closed for c in conns)
    assert pg_server.wait_count(app_name, 2) == 2
    new = _pids(pg_server, app_name)
    assert not new & old
    x, y = p.getconn(), p.getconn()
    assert {backend_pid(x), backend_pid(y)} == new


@both_pools
def test_returning_closed_connections_refills_and_prune_keeps_floor(
    pool_cls: type[Any],
    clock: FakeClock,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    # Two minconn connections closed by the user while checked out, then returned: the
    # pool tops up to minconn at once, and prune() never goes below it.
    p = make_pool(with_clock(pool_cls, clock), 2, 5, dsn, idle_timeout=5)
    a, b, c = p.getconn(), p.getconn(), p.getconn()
    a.close()
    b.close()
    p.putconn(a)
    p.putconn(b)
    p.putconn(c)
    assert pg_server.wait_count(app_name, 2) == 2
    clock.advance(6)
    p.prune()
    assert pg_server.wait_count(app_name, 2) == 2
    x, y = p.getconn(), p.getconn()
    assert select_one(x) == select_one(y) == 1


@both_pools
def test_refill_failure_is_logged_not_raised(
    pool_cls: type[Any],
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Flaky:
        fail = False

    class FlakyConnection(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if Flaky.fail:
                raise psycopg2.OperationalError("server unreachable (test)")
            super().__init__(*args, **kwargs)

    p = make_pool(pool_cls, 1, 3, dsn, connection_factory=FlakyConnection)
    conn = p.getconn()
    Flaky.fail = True
    with caplog.at_level("WARNING", logger="psycopool"):
        p.putconn(conn, close=True)  # refill fails: logged, not raised
        p.prune()
    assert pg_server.wait_count(app_name, 0) == 0
    assert "server unreachable (test)" in caplog.text
    Flaky.fail = False
    p.prune()
    assert pg_server.wait_count(app_name, 1) == 1
