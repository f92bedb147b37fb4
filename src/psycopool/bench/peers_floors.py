"""The floors: the least a pool can do (a deque under a lock), to show what pools cost above it."""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any

from psycopool.bench.peers_base import Exhausted, Peer

# psycopg2's transaction status values (psycopg2.extensions), spelled out to keep imports lazy.
_PG2_IDLE = 0
_PG2_UNKNOWN = 4


class _FloorBase(Peer):
    """The least a pool can do: a LIFO deque of open psycopg2 connections and a count."""

    modules = ("psycopg2",)
    distributions = ()

    def __init__(self) -> None:
        super().__init__()
        self._dsn = ""
        self._max = 0
        self._size = 0
        self._idle: collections.deque[Any] = collections.deque()
        self._lent: set[int] = set()
        self._all: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2

        self._dsn, self._max = dsn, max_size
        for _ in range(min_size):
            conn = psycopg2.connect(dsn)
            self._all[id(conn)] = conn
            self._idle.append(conn)
        self._size = min_size

    def _connect_reserved(self) -> Any:
        """Connect for a slot already counted in ``_size``, outside the lock."""
        import psycopg2

        try:
            conn = psycopg2.connect(self._dsn)
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all[id(conn)] = conn
        return conn

    def put(self, conn: Any, close: bool = False) -> None:
        if not close:
            status = conn.get_transaction_status()
            if status == _PG2_UNKNOWN:
                close = True
            elif status != _PG2_IDLE:
                try:
                    conn.rollback()
                except Exception:
                    close = True
        if close:
            with contextlib.suppress(Exception):
                conn.close()
            with self._cond:
                self._all.pop(id(conn), None)
                self._size -= 1
                self._cond.notify()
            return
        self._put_idle(conn)

    def _put_idle(self, conn: Any) -> None:
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            conns = list(self._all.values())
            self._all.clear()
            self._idle.clear()
            self._size = 0
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


class FloorLockPeer(_FloorBase):
    """deque + Lock; raises when exhausted (like psycopg2.pool)."""

    key = "floor-lock"
    label = "floor: deque+Lock"
    raises_when_exhausted = True

    def get(self) -> Any:
        # The bare Lock, not the Condition: no waiter to wake, nothing else to pay for.
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._size >= self._max:
                raise Exhausted("connection pool exhausted")
            self._size += 1
        return self._connect_reserved()

    def _put_idle(self, conn: Any) -> None:
        with self._lock:
            self._idle.append(conn)

    def is_exhausted(self, exc: BaseException) -> bool:
        return isinstance(exc, Exhausted)


class FloorConditionPeer(_FloorBase):
    """deque + threading.Condition; waits when exhausted (not FIFO: a returner may barge)."""

    key = "floor-cond"
    label = "floor: deque+Condition"

    def get(self) -> Any:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._size < self._max:
                    self._size += 1
                    break
                self._cond.wait()
        return self._connect_reserved()
