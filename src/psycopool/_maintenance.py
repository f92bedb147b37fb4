"""The threaded pool's maintenance: :class:`Maintenance`, a base of the pool.

The upkeep pass its background thread runs (decided under the lock by
``BasePool``, the I/O done here), and the calls that ask for one:
``check()``, ``resize()``, ``drain()``, and leaving a server that turned
read-only. Kept apart from ``_pool.py``, which builds the pool and runs its
life cycle (open, wait, close); ``_maintenance_async.py`` is its asyncio twin.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from psycopool._base import CT
from psycopool._entries import PooledConnection
from psycopool._health import ping
from psycopool._lending import LendingPool

logger = logging.getLogger("psycopool")


class Maintenance(LendingPool[CT]):
    """Upkeep pass, check, resize and drain of :class:`ConnectionPool`."""

    # -- maintenance ---------------------------------------------------------

    def _upkeep_pass(self, check_all: bool = False) -> None:
        """One round of upkeep: reclaim dropped, report leaks, expire, (check), refill."""
        engine = self._engine
        with engine.lock:
            if self._closed:
                return
            chores = self._decide_upkeep_locked(self.clock(), check_all)
        self._report(chores)
        engine.close(chores.to_close)
        if chores.to_check:
            self._check_idle(chores.to_check)
        self._upkeep.request_connections()

    def _check_idle(self, entries: list[PooledConnection]) -> None:
        """Check connections taken off the idle stack (counted pending); keep the good ones."""
        engine = self._engine
        driver = self._driver
        # Every ping ends by the pool's timeout: check() is bounded even on a dead network.
        deadline = time.monotonic() + self.timeout
        good = [
            e for e in entries if self._engine.is_alive(e) and ping(driver, e.conn, e.fd, deadline)
        ]
        bad = [e for e in entries if e not in good]
        with engine.lock:
            ended = self._settle_checked_locked(entries, good, bad)
        engine.close(bad)
        engine.close(ended)

    def check(self) -> None:
        """Check every idle connection now (liveness and a round trip); replace the dead ones.

        Also applies max_idle, max_lifetime and leak reporting at once, and
        refills ``min_size``: what the upkeep thread does periodically.
        """
        if self._closed or not self._opened:
            raise self._closed_error()
        self._upkeep_pass(check_all=True)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the sizes. Growth starts at once; excess idle connections are closed now,
        excess lent ones when they come back."""
        with self._engine.lock:
            self._resize_locked(min_size, max_size)
        if self._opened and not self._closed:
            self._upkeep_pass()

    def drain(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back.

        For a credential rotation, a DNS change or a primary switch: after
        ``drain()`` no connection opened before it is lent again (a waiter
        already handed one keeps it until it returns it), and ``min_size`` is
        refilled with new connections at once.
        """
        engine = self._engine
        with engine.lock:
            if self._closed:
                raise self._closed_error()
            idle = self._drain_locked()
        engine.close(idle)
        if self._opened:
            self._upkeep.request_connections()

    def _leave_read_only_server(self, conn: Any) -> None:
        """``conn``'s server turned read-only (see ``_readonly.py``): close ``conn`` when it
        comes back and drain the others, unless a drain since ``conn`` was opened did."""
        engine = self._engine
        with engine.lock:
            entry = engine.in_use.get(id(conn))
            if entry is None or self._closed:
                return
            if entry.epoch < engine.epoch:
                entry.expires_at = float("-inf")  # drained already: just this one
                return
        logger.warning(
            "pool %r: the server turned read-only (SQLSTATE 25006) while the pool asks for a"
            " writable one: draining its connections",
            self.name,
        )
        self.drain()
