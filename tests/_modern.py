"""Helpers for the ``psycopool.ConnectionPool`` tests (test_pool_*.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from _clock import FakeClock as FakeClock  # re-exported for the test modules

from psycopool import ConnectionPool


def clocked(clock: Callable[[], float]) -> type[ConnectionPool]:
    """A ConnectionPool subclass measuring ages and deadlines with ``clock``."""

    class P(ConnectionPool):
        pass

    P.clock = staticmethod(clock)  # type: ignore[method-assign]
    return P


def pid_of(conn: Any) -> int:
    """The server pid behind ``conn`` (a real round trip: fails if the connection is dead)."""
    return int(query(conn, "SELECT pg_backend_pid()"))


def query(conn: Any, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    """The first column of the first row of ``sql``, for both drivers."""
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None else row[0]


def execute(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout``; its last truthiness."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(step)


def wait_waiting(pool: ConnectionPool, n: int, timeout: float = 5.0) -> None:
    """Wait until ``n`` borrowers are queued (stats()['requests_waiting'])."""
    assert wait_until(lambda: pool.stats()["requests_waiting"] == n, timeout), pool.stats()


@contextlib.contextmanager
def hanging_server() -> Iterator[tuple[str, int]]:
    """A TCP socket on 127.0.0.1 that accepts connections and never answers: (host, port)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                continue
            accepted.append(sock)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for sock in accepted:
            sock.close()
        listener.close()
