"""The engine's way out for connections: :class:`Closing`, a base of ``Engine``.

A connection leaves the books in two steps: retired under the lock (counted
``closing``, so it keeps its slot while the server still sees it), then
closed without the lock, which frees the slot. Kept apart from
``_engine.py``, which keeps the rest of the books (opening, lending,
returning, handoff, idle expiry).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopool._drivers import Driver
    from psycopool._entries import PooledConnection, Waiter
    from psycopool._health import SocketWatcher

logger = logging.getLogger("psycopool")

#: Close reasons logged at INFO (something was wrong with the connection); others at DEBUG.
BROKEN_REASONS = frozenset({"dead", "failed check", "failed reset", "broken"})


class Closing:
    """Retiring and closing an engine's connections (the books are :class:`Engine`'s)."""

    # Set by Engine.__init__ (the rule for taking the lock is at Engine.lock).
    driver: Driver
    lock: threading.RLock
    idle: list[PooledConnection]
    in_use: dict[int, PooledConnection]
    waiters: deque[Waiter]
    closing: int
    closed: bool
    watcher: SocketWatcher
    name: str

    # -- retiring and closing ------------------------------------------------

    def retire_locked(self, *entries: PooledConnection, reason: str | None = None) -> None:
        """Count connections taken off idle, in use or pending as closing. Lock held.

        They still exist on the server until :meth:`close` has closed them, so
        they keep their slot: no one can open a connection in their place before.
        ``reason`` is logged when they are closed (see :meth:`close`).
        """
        self.closing += len(entries)
        if reason is not None:
            for entry in entries:
                entry.close_reason = reason

    def close(self, entries: Iterable[PooledConnection], reason: str | None = None) -> None:
        """Close retired connections, then free their slots. No lock held.

        Each is logged with ``reason``, else the reason it was retired with: at
        INFO for a connection found broken ("dead", "failed check", "failed
        reset", "broken"), at DEBUG for routine ones ("expired", "idle",
        "drained", "pool closed"...).
        """
        entries = list(entries)
        if not entries:
            return
        if logger.isEnabledFor(logging.INFO):
            reasons: dict[str, int] = {}
            for entry in entries:
                why = reason or entry.close_reason or "closed"
                reasons[why] = reasons.get(why, 0) + 1
            for why, count in reasons.items():
                level = logging.INFO if why in BROKEN_REASONS else logging.DEBUG
                logger.log(
                    level,
                    "pool %r: %s %d connection%s (%s)",
                    self.name,
                    "discarding" if level == logging.INFO else "closing",
                    count,
                    "" if count == 1 else "s",
                    why,
                )
        done = 0
        try:
            for entry in entries:
                self._close_entry(entry)
                done += 1
        finally:
            # Interrupted (KeyboardInterrupt...): close the rest all the same, then
            # free every slot, or they would stay counted as closing for ever.
            for entry in entries[done:]:
                try:
                    self._close_entry(entry)
                except Exception:
                    pass
            with self.lock:
                self.closing -= len(entries)

    def _close_entry(self, entry: PooledConnection) -> None:
        conn = entry.conn if entry.ref is None else entry.ref()
        if conn is None:
            return  # garbage-collected: the driver closed it
        if not self.driver.is_closed(conn):
            # Unwatch while the socket is still ours: once closed, its number
            # may already belong to a newer connection.
            self.watcher.remove(entry.fd)
        self.driver.close(conn)

    def close_one(self, entry: PooledConnection, reason: str | None = None) -> None:
        """Close one retired connection, then free its slot. No lock held."""
        self.close((entry,), reason)

    # -- closing -------------------------------------------------------------

    def close_all_locked(
        self, into: list[PooledConnection] | None = None
    ) -> list[PooledConnection]:
        """Mark the engine closed and take every connection it counts. Lock held.

        Connections still being opened are closed by their opener when it sees
        ``closed``. Waiters are woken with no connection. The connections are
        appended to ``into`` (which the caller closes in a ``finally``) first.
        """
        self.closed = True
        entries: list[PooledConnection] = [] if into is None else into
        entries.extend(self.idle)
        entries.extend(self.in_use.values())
        for entry in entries:
            entry.close_reason = "pool closed"
        self.idle.clear()
        self.in_use.clear()
        self.closing += len(entries)
        while self.waiters:
            self.waiters.popleft().wake()
        return entries
