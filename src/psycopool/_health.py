"""Is an idle connection still alive? Answered without a round trip.

An idle connection's socket has nothing to read. If it is readable, the
server sent something: a NOTIFY (consume it and keep the connection), or a
FATAL termination notice followed by EOF (discard it: the notice alone is
enough, as the EOF may still be on its way). One ``epoll`` set watches all of a pool's
sockets, so the usual answer ("nothing anywhere") costs one system call.
A silently dropped network is not seen here; ``check="ping"`` or TCP
keepalives (``network_timeout``, see ``_network.py``) catch that.
"""

from __future__ import annotations

import select
from typing import Any

from psycopool._drivers import AsyncDriver, Driver
from psycopool._network import WATCHDOG, bounded

#: A connection returned less than this many seconds ago (100 µs) is handed out
#: again without looking at its socket: a tight borrow/return loop skips one
#: system call per borrow, while a kill that lands in that window is as likely
#: as one landing between the check and the borrower's first query. HikariCP
#: skips its check for 500 ms.
RECENTLY_USED = 0.0001

# A server that keeps sending (a NOTIFY storm) must not keep us here for ever:
# after this many reads a connection that still answers is considered alive.
_MAX_READS = 16


class SocketWatcher:
    """Tells which of a pool's sockets have input waiting."""

    def __init__(self) -> None:
        self._epoll: Any = select.epoll() if hasattr(select, "epoll") else None

    def add(self, fd: int) -> None:
        if self._epoll is not None:
            try:
                self._epoll.register(fd, select.EPOLLIN)
            except FileExistsError:
                self._epoll.modify(fd, select.EPOLLIN)
            except ValueError:
                pass  # the pool closed meanwhile: its opener will close this one

    def remove(self, fd: int) -> None:
        """Stop watching ``fd``; call it while the socket is still open."""
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def has_input(self, fd: int) -> bool:
        epoll = self._epoll
        if epoll is None:
            return _fd_has_input(fd)
        try:
            ready = epoll.poll(0)
        except ValueError:  # closed with its pool meanwhile
            return _fd_has_input(fd)
        if not ready:
            return False
        return any(ready_fd == fd for ready_fd, _ in ready)

    def renew(self) -> None:
        """A fresh, empty set (in a forked child: the old one is shared with the parent)."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = select.epoll()

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()


def _fd_has_input(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def is_alive(driver: Driver, conn: Any, fd: int, watcher: SocketWatcher) -> bool:
    """True if ``conn`` may be handed out: not closed, and no EOF or error waiting on its socket."""
    if driver.is_closed(conn):
        return False
    if not watcher.has_input(fd):
        return True
    try:
        for _ in range(_MAX_READS):
            ended = driver.consume_input(conn)
            if ended or driver.is_closed(conn):
                return False
            if not _fd_has_input(fd):
                return True
    except Exception:
        return False
    return not driver.is_closed(conn)


def ping(driver: Driver, conn: Any, fd: int = -1, deadline: float | None = None) -> bool:
    """True if the server answers a trivial query: one round trip, catches dead networks.

    Run outside any transaction, so the connection stays IDLE. With a
    ``deadline`` (``time.monotonic()``) and the socket ``fd``, a ping still
    unanswered then fails: its socket is shut down (discard the connection).
    """
    return bounded(driver, conn, fd, deadline if fd >= 0 else None, _select_one(driver))


def _select_one(driver: Driver) -> Any:
    return lambda conn: driver.execute_autocommit(conn, "SELECT 1")


async def aping(
    driver: AsyncDriver, conn: Any, fd: int = -1, deadline: float | None = None
) -> bool:
    """:func:`ping` for an async connection, bounded the same way. A cancellation is not caught."""
    token = WATCHDOG.arm(fd, deadline) if deadline is not None and fd >= 0 else 0
    try:
        await driver.aexecute_autocommit(conn, "SELECT 1")
        ok = True
    except Exception:
        ok = False
    finally:
        if token and WATCHDOG.disarm(token):
            ok = False  # the socket was shut down: discard the connection
    return ok
