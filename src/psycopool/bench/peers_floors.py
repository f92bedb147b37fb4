"""The floors: the least a pool can do (a deque under a lock), to show what pools cost above it.

Each floor is a small pool object with ``getconn``/``putconn``, and its peer
calls them as every other peer calls its pool's: the adapter layer and the
pool's own method call are then the same on every row, and what a row costs
above the floor is what its pool does above a deque and a lock.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from typing import Any

from psycopool.bench.peers_base import Exhausted, Peer

# psycopg2's transaction status values (psycopg2.extensions), spelled out to keep imports lazy.
_PG2_IDLE = 0
_PG2_UNKNOWN = 4


class _DequePool:
    """A LIFO deque of open psycopg2 connections and a count; rolled back on return."""

    def __init__(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2

        self._dsn, self._max = dsn, max_size
        self._idle: collections.deque[Any] = collections.deque()
        self._all: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
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

    def putconn(self, conn: Any, close: bool = False) -> None:
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


class DequeLockPool(_DequePool):
    """deque + Lock; raises when exhausted (like psycopg2.pool)."""

    def getconn(self) -> Any:
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


class DequeConditionPool(_DequePool):
    """deque + threading.Condition; waits when exhausted (not FIFO: a returner may barge)."""

    def getconn(self) -> Any:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._size < self._max:
                    self._size += 1
                    break
                self._cond.wait()
        return self._connect_reserved()


class _FloorPeer(Peer):
    modules = ("psycopg2",)
    distributions = ()
    pool_class: type[_DequePool] = DequeLockPool

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        self.pool = self.pool_class(dsn, min_size, max_size)

    def get(self) -> Any:
        return self.pool.getconn()

    def put(self, conn: Any, close: bool = False) -> None:
        self.pool.putconn(conn, close)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class FloorLockPeer(_FloorPeer):
    """deque + Lock; raises when exhausted (like psycopg2.pool)."""

    key = "floor-lock"
    label = "floor: deque+Lock"
    raises_when_exhausted = True
    pool_class = DequeLockPool

    def is_exhausted(self, exc: BaseException) -> bool:
        return isinstance(exc, Exhausted)


class FloorConditionPeer(_FloorPeer):
    """deque + threading.Condition; waits when exhausted (not FIFO: a returner may barge)."""

    key = "floor-cond"
    label = "floor: deque+Condition"
    pool_class = DequeConditionPool
