"""The engine's records: a connection's entry, a queued borrower, and loan matching.

Kept apart from the engine (``_engine.py``), which counts and moves these
records under its lock; nothing here takes a lock or does I/O.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from psycopool._drivers import SessionState
from psycopool._loans import Stack

if TYPE_CHECKING:
    import asyncio


class PooledConnection:
    """The engine's record of one connection: the object plus what the pool knows of it."""

    __slots__ = (
        "borrowed_at",
        "borrower",
        "close_reason",
        "conn",
        "created_at",
        "epoch",
        "expires_at",
        "fd",
        "idle_since",
        "key",
        "leak_reported",
        "owner",
        "ref",
        "returner",
        "stack",
        "state",
    )

    def __init__(self, conn: Any, fd: int, state: SessionState, now: float) -> None:
        self.conn = conn
        #: The socket, recorded once: the liveness check watches it.
        self.fd = fd
        #: A weak reference, when the pool lends connections without keeping them
        #: alive (``conn`` is then None while lent), to see borrowers drop them.
        self.ref: weakref.ref[Any] | None = None
        #: Session attributes when opened, restored on every return.
        self.state = state
        self.created_at = now
        self.idle_since = now
        self.borrowed_at = now
        #: When this connection should be recycled (modern pool's max_lifetime).
        self.expires_at = float("inf")
        #: The engine's epoch when this connection was asked for: drain() moves
        #: the engine to a new one, and older connections are closed on arrival.
        self.epoch = 0
        #: The drop-in's key while checked out.
        self.key: Any = None
        #: Loan matching (see :func:`stale_return`): the thread the connection is
        #: lent to (``threading.get_ident()``), 0 while it is not lent to anyone
        #: yet (in transit to a waiter, or just opened); and the last thread that
        #: returned it.
        self.owner = 0
        self.returner = 0
        #: The borrower's stack, kept only when leak detection is on.
        self.stack: Stack | None = None
        #: The borrowing thread's ident (or a task's name), kept when borrowers are tracked.
        self.borrower: int | str | None = None
        #: Why it was retired, for the log line when it is closed.
        self.close_reason: str | None = None
        self.leak_reported = False


class Waiter:
    """A borrower queued for a connection: woken with one handed to it, in arrival order.

    The engine knows waiters only through :meth:`hand` and :meth:`wake`, so a
    thread (this class, an Event) and an asyncio task (:class:`FutureWaiter`)
    queue in the same FIFO and get connections through one code path.
    """

    __slots__ = ("_gate", "entry", "error", "signalled", "since")

    def __init__(self) -> None:
        self.entry: PooledConnection | None = None
        self.error: BaseException | None = None
        # A bare lock, held until the waiter is signalled: releasing it is one C
        # call, which an interrupt can't cut in half (threading.Event.set() runs
        # Python code, and an interrupted one left its waiter asleep until timeout).
        self._gate = threading.Lock()
        self._gate.acquire()
        self.signalled = False
        #: When it started waiting (real time: waits are never on a fake clock).
        self.since = time.monotonic()

    def wait(self, timeout: float) -> bool:
        """Block until signalled or ``timeout`` seconds; True if signalled. No lock held."""
        return self._gate.acquire(True, timeout)

    def hand(self, entry: PooledConnection) -> bool:
        """Give ``entry`` to this waiter; False if it has stopped waiting. Lock held."""
        self.entry = entry
        if not self.signalled:
            self.signalled = True
            self._gate.release()
        return True

    def wake(self) -> None:
        """Wake the waiter with no connection (the pool closed). Lock held."""
        if not self.signalled:
            self.signalled = True
            self._gate.release()


class FutureWaiter(Waiter):
    """An asyncio task queued for a connection: its future gets the entry.

    Only the event loop's thread may touch the future, which holds as the async
    pool does all its work on its loop. A waiter whose future is already done
    (its task was cancelled, or it timed out) is skipped by the handoff.
    """

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[PooledConnection | None]) -> None:
        self.entry = None
        self.error = None
        self.future = future
        self.since = time.monotonic()

    def hand(self, entry: PooledConnection) -> bool:
        if self.future.done():
            return False
        self.entry = entry
        self.future.set_result(entry)
        return True

    def wake(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


def stale_return(entry: PooledConnection, me: int) -> bool:
    """Is thread ``me`` returning a loan that is not its own? (Lock held, entry in use.)

    A return is matched to its loan, not only to the connection object. It is
    refused when the connection is in transit to a waiter (no one holds that
    loan yet), or when ``me`` is the thread that returned it last and it has
    since been lent to another thread that is still running: a second, stale
    return. A return by a thread other than the borrower is accepted (borrowed
    in one thread, returned by another, or on behalf of a borrower that ended).
    The one case that can't be told apart from a stale return, and is refused
    too: a thread returning, on behalf of a borrower still running, a
    connection that it was itself the last to return.
    """
    owner = entry.owner
    if owner == me:
        return False
    if owner == 0:
        return True
    return entry.returner == me and any(t.ident == owner for t in threading.enumerate())
