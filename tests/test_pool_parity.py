"""psycopg_pool's API on ConnectionPool: drain, stats, reconnect_timeout, num_workers."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from _modern import pid_of, wait_until

from psycopool import ConnectionPool
from psycopool._backoff import BACKOFF_MAX, Backoff


def _refused_dsn() -> str:
    """A conninfo whose port nothing listens on: every attempt fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2"


def test_backoff_grows_then_gives_up_once_then_recovers():
    backoff = Backoff(reconnect_timeout=1.0, jitter=lambda a, b: 1.0)
    assert backoff.failed(10.0) == (0.1, False)
    assert backoff.failed(10.1) == (0.2, False)
    assert backoff.failed(10.3) == (0.4, False)
    assert backoff.failed(10.7) == (pytest.approx(0.3), False)  # lands on the deadline
    assert backoff.failed(11.0) == (1.6, True)  # given up: once
    delay, gave_up = backoff.failed(12.6)
    assert not gave_up and delay == 3.2
    assert backoff.succeeded() == 6
    assert backoff.failed(50.0) == (0.1, False)  # a new run starts from the beginning
    never = Backoff(None, jitter=lambda a, b: 1.0)
    for i in range(100):
        delay, gave_up = never.failed(float(i))
        assert not gave_up and delay <= BACKOFF_MAX


def test_reconnect_failed_called_once_after_reconnect_timeout():
    calls: list[Any] = []
    failed = threading.Event()

    def reconnect_failed(pool: Any) -> None:
        calls.append(pool)
        failed.set()

    pool = ConnectionPool(
        _refused_dsn(), min_size=1, reconnect_timeout=0.3, reconnect_failed=reconnect_failed
    )
    try:
        assert failed.wait(10), pool.stats()
        assert calls == [pool]
        stats = pool.stats()
        # psycopg_pool's meaning: attempts, and the failed ones among them.
        assert stats["connections_num"] == stats["connections_errors"] >= 2
    finally:
        pool.close()
    assert calls == [pool]


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_drain_closes_every_old_connection(pg_server: Any, app_name: str, dsn: str, driver: str):
    with ConnectionPool(dsn, min_size=2, max_size=4, driver=driver) as pool:
        pool.wait(10)
        before = set(pg_server.pids(app_name))
        assert len(before) == 2
        lent = pool.getconn(timeout=5)
        pool.drain()
        # The idle one is closed and min_size refilled at once; the lent one stays lent.
        now = lambda: set(pg_server.pids(app_name))  # noqa: E731
        assert wait_until(lambda: len(now() & before) == 1 and len(now() - before) == 1, 5)
        pool.putconn(lent)  # closed, and replaced
        assert wait_until(lambda: not now() & before and len(now()) == 2, 5), now()
        with pool.connection(timeout=5) as conn:
            assert pid_of(conn) not in before
        assert pool.stats()["connections_drained"] == 2


def test_pop_stats_resets_counters_not_gauges(pg_server: Any, dsn: str):
    with ConnectionPool(dsn, min_size=1) as pool:
        pool.wait(10)
        with pool.connection(timeout=5):
            pass
        stats = pool.pop_stats()
        assert stats["requests_num"] == 1 and stats["connections_num"] == 1
        assert "usage_ms" in stats
        again = pool.get_stats()
        assert again["requests_num"] == 0 and again["connections_num"] == 0
        assert again["pool_size"] == 1 and again["pool_min"] == 1


def test_num_workers_bounds_connections_opened_at_once(pg_server: Any, dsn: str):
    with pytest.raises(ValueError, match="num_workers"):
        ConnectionPool(dsn, num_workers=0, open=False)
    with ConnectionPool(dsn, min_size=3, num_workers=1) as pool:
        assert pool.num_workers == 1
        pool.wait(10)
