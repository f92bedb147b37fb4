"""Pools in a forked child: the registry of engines and the hook that resets them.

A child inherits its parent's pools, their sockets included, and must not end
the parent's sessions by closing them. Every engine registers itself here;
after a fork, :func:`_after_fork_in_child` makes each forget what it inherited
(:meth:`ForkAware._forget_after_fork`, a base of ``Engine``). Kept apart from
``_engine.py``, which imports this module (never the reverse but for types) and
registers the hook.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopool._drivers import Driver
    from psycopool._engine import Engine
    from psycopool._entries import PooledConnection, Waiter
    from psycopool._health import SocketWatcher


class ForkAware:
    """What an engine does in a forked child (the books are :class:`Engine`'s)."""

    # Set by Engine.__init__.
    driver: Driver
    lock: threading.RLock
    watcher: SocketWatcher
    idle: list[PooledConnection]
    in_use: dict[int, PooledConnection]
    waiters: deque[Waiter]
    pending: int
    closing: int
    after_fork: Callable[[], None] | None

    def _forget_after_fork(self) -> None:
        """In a forked child: drop inherited connections without ending the parent's sessions.

        Closing them through the driver would send a Terminate message on the
        socket the parent still uses. Instead each inherited socket is pointed
        at /dev/null, so whatever the driver later writes or closes lands there.
        """
        self.lock = threading.RLock()
        self.watcher.renew()
        entries = list(self.idle) + list(self.in_use.values())
        self.idle.clear()
        self.in_use.clear()
        self.waiters.clear()
        self.pending = 0
        self.closing = 0
        if entries:
            devnull = os.open(os.devnull, os.O_RDWR)
            try:
                for entry in entries:
                    conn = entry.conn if entry.ref is None else entry.ref()
                    if conn is None or self.driver.is_closed(conn):
                        continue  # its socket number may belong to something else now
                    try:
                        os.dup2(devnull, entry.fd)
                    except OSError:
                        continue
            finally:
                os.close(devnull)
        if self.after_fork is not None:
            self.after_fork()


_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for engine in list(_ENGINES):
        try:
            engine._forget_after_fork()
        except Exception:
            # One pool failing here must not leave the next ones sharing the parent's sockets.
            logging.getLogger("psycopool").exception("after fork: a pool could not reset")
