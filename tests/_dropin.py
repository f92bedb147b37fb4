"""Helpers shared by the ``psycopool.pool`` drop-in tests (test_dropin_*.py)."""

from __future__ import annotations

import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from _clock import FakeClock as FakeClock  # re-exported for the test modules

from psycopool import pool

POOL_CLASSES = [pool.SimpleConnectionPool, pool.ThreadedConnectionPool]

#: Parametrize a test over both concrete classes (their behaviour must be the same).
both_pools = pytest.mark.parametrize("pool_cls", POOL_CLASSES, ids=["Simple", "Threaded"])


def with_clock(pool_cls: type[Any], clock: Callable[[], float]) -> type[Any]:
    """A subclass of ``pool_cls`` that measures idle ages with ``clock``."""
    return type(f"Clocked{pool_cls.__name__}", (pool_cls,), {"clock": staticmethod(clock)})


def backend_pid(conn: Any) -> int:
    """The server pid behind ``conn`` (a real round trip: fails if the connection is dead)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid: int = cur.fetchone()[0]
    return pid


def select_one(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        value: int = cur.fetchone()[0]
    return value


def show(conn: Any, setting: str) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW {setting}")
        value: str = cur.fetchone()[0]
    return value


def backend_state(pg_server: Any, pid: int) -> tuple[Any, ...] | None:
    """``(state, query, state_change)`` of backend ``pid`` from pg_stat_activity, or None."""
    rows = pg_server._query(
        "SELECT state, query, state_change FROM pg_stat_activity WHERE pid = %s", (pid,)
    )
    return tuple(rows[0]) if rows else None


def safe_close(p: Any) -> None:
    try:
        p.closeall()
    except pool.PoolError:
        pass


class PoolFactory:
    """Makes pools and closes them all at teardown (already-closed ones are skipped)."""

    def __init__(self) -> None:
        self.pools: list[Any] = []

    def __call__(self, cls: type[Any], *args: Any, **kwargs: Any) -> Any:
        p = cls(*args, **kwargs)
        self.pools.append(p)
        return p

    def close(self) -> None:
        for p in self.pools:
            safe_close(p)


def make_dsn(dsn: str, **kwargs: Any) -> str:
    return psycopg2.extensions.make_dsn(dsn, **kwargs)


_TCP_CLOSE_WAIT = 8  # Linux tcp_states.h: the peer sent its FIN


def wait_readable(*conns: Any, timeout: float = 5.0) -> None:
    """Wait until the server's goodbye (error and EOF) has reached each connection's socket.

    pg_stat_activity forgets a terminated backend before its socket is closed, and the FATAL
    message arrives before the FIN: without this, a zero-round-trip liveness check could
    legitimately still see a live connection. On TCP, wait for the socket state CLOSE_WAIT.
    """
    for conn in conns:
        ready, _, _ = select.select([conn.fileno()], [], [], timeout)
        assert ready, "the terminated backend's socket never became readable"
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
                except (OSError, AttributeError):  # not TCP or not Linux
                    time.sleep(0.05)
                    break
                if state == _TCP_CLOSE_WAIT:
                    break
                assert time.monotonic() < deadline, f"socket still in TCP state {state}"
                time.sleep(0.001)
        finally:
            sock.close()  # only the duplicate
