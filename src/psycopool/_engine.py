"""The engine: the only code that counts connections.

It owns the lock, the idle stack (LIFO: warm connections first), the table
of connections in use, the FIFO queue of waiting borrowers and the count of
connections being opened or cleaned ("pending") and of those being closed
("closing"). Front doors (the psycopg2
drop-in and the modern pool) decide *policy*; the engine keeps the books.

Invariant: ``len(idle) + len(in_use) + pending + closing`` is the number of
connections that exist for this pool (what the server sees), and never
exceeds ``max_size``.
No I/O ever happens while the lock is held: connecting, cleaning and
closing are done by the caller around the short locked sections.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from psycopool._closing import BROKEN_REASONS as BROKEN_REASONS
from psycopool._closing import Closing
from psycopool._drivers import Driver
from psycopool._entries import PooledConnection, Waiter
from psycopool._fork import _ENGINES as _ENGINES
from psycopool._fork import ForkAware
from psycopool._fork import _after_fork_in_child as _after_fork_in_child
from psycopool._health import RECENTLY_USED, SocketWatcher, is_alive
from psycopool._loans import Loan, lent_locked, loans

if TYPE_CHECKING:
    from psycopool._timings import Timings

logger = logging.getLogger("psycopool")

if TYPE_CHECKING:
    pass

Clock = Callable[[], float]
T = TypeVar("T")


class Owner(Protocol):
    """The thread that owns a pool's books, for readers on other threads (see Engine.still)."""

    def run(self, fn: Callable[[], T], lock: threading.RLock) -> tuple[bool, T | None]:
        """``(True, fn())`` run by the owner under ``lock``; ``(False, None)``: run it here."""


class Engine(Closing, ForkAware):
    """Accounting, handoff and liveness for one pool's connections.

    Retiring and closing connections is :class:`~psycopool._closing.Closing`;
    forgetting them in a forked child, :class:`~psycopool._fork.ForkAware`.
    """

    def __init__(
        self,
        driver: Driver,
        connect: Callable[[], Any],
        *,
        max_size: int,
        clock: Clock = time.monotonic,
    ) -> None:
        self.driver = driver
        self._connect = connect
        self.max_size = max_size
        self.clock = clock
        #: An RLock, so that a hot path can take it without ``with`` (which costs
        #: as much again as the lock on CPython 3.11) and still never leave it held
        #: after an interrupt. The rule, where a hot path takes it:
        #: ``try: lock.acquire(); ...; lock.release()`` with a handler that calls
        #: ``lock.release()`` inline (a Python call would give a pending interrupt
        #: a point to land before the release) and ignores its RuntimeError: an
        #: RLock refuses a release by a thread that doesn't hold it, so wherever the
        #: interrupt landed (before the acquire completed, after the section's own
        #: release) the lock ends free, and another thread's hold is never freed.
        #: The engine never takes its lock re-entrantly.
        #:
        #: An asyncio pool's books are written only on its event loop's thread
        #: (asyncio objects belong to one thread), so its hot paths skip the lock:
        #: nothing can run between their steps but an interrupt, and the rule
        #: below for the idle stack covers that. Its locked sections still take
        #: the lock; readers on other threads go through :meth:`still`.
        self.lock = threading.RLock()
        #: Set by an asyncio pool: runs another thread's reader on the loop.
        self.owner: Owner | None = None
        #: A list, its top at the end. The hot paths record a connection in use
        #: before popping it: an interrupt lands only after a call returns, so
        #: it never finds a connection on neither side of the books.
        self.idle: list[PooledConnection] = []
        self.in_use: dict[int, PooledConnection] = {}
        self.waiters: deque[Waiter] = deque()
        self.pending = 0
        #: Connections taken off the books to be closed, until they are.
        self.closing = 0
        self.closed = False
        #: Bumped by drain(): connections from an older epoch are not kept.
        self.epoch = 0
        self.watcher = SocketWatcher()
        #: Lend without keeping connections alive, and reclaim the slot of one a
        #: borrower drops (the modern pool). The drop-in keeps psycopg2's strong refs.
        self.track_dropped = False
        #: Entries whose connection was garbage-collected; filled by weakref
        #: callbacks, which may run anywhere (even under the lock): append only.
        self.dropped: deque[PooledConnection] = deque()
        #: The last connection error, password masked, for timeout messages.
        self.last_connect_error: str | None = None
        #: Called in a forked child after the inherited connections were dropped.
        self.after_fork: Callable[[], None] | None = None
        # Counters for stats(); plain ints, updated under the lock or by the owner.
        #: Connection attempts (psycopg_pool's meaning), failed ones included.
        self.connections_num = 0
        self.connections_ms = 0
        self.connections_errors = 0
        self.connections_lost = 0
        #: Borrows that gave up: PoolTimeout (the drop-in: "exhausted").
        self.timeouts = 0
        #: The pool's name, for log lines.
        self.name = "pool"
        #: Set by psycopool.metrics (see _timings.py); while None nothing is recorded.
        #: Front doors append, where they write the books: each returned connection's
        #: use time (seconds) to ``use_times``; hand_locked() records each handoff's wait.
        self.timings: Timings | None = None
        self.use_times: list[float] | None = None
        self.wait_times: list[float] | None = None
        self.create_times: list[float] | None = None
        _ENGINES.add(self)

    # -- state ---------------------------------------------------------------

    @property
    def size(self) -> int:
        """Connections that exist for this pool: idle, in use, being opened, cleaned or closed."""
        return len(self.idle) + len(self.in_use) + self.pending + self.closing

    def still(self, fn: Callable[[], T]) -> T:
        """``fn()`` with the books holding still, from any thread: how readers read.

        Under the lock; for an asyncio pool called from another thread, on the
        loop too, since its hot paths don't take the lock (see :attr:`lock`).
        """
        owner = self.owner
        if owner is not None:
            ran, value = owner.run(fn, self.lock)
            if ran:
                return value  # type: ignore[return-value]
        with self.lock:
            return fn()

    # -- opening -------------------------------------------------------------

    def open_connection(self, reserved: list[bool] | None = None) -> PooledConnection:
        """Connect (no lock held) for a slot already reserved by ``pending += 1``.

        On failure the reservation is given back and the error raised. On
        success the new connection is returned still counted as pending: the
        caller decides where it goes (``lend_new_locked``, ``give_back_locked``, or
        ``retire_locked`` then ``close``). The three steps (reserve, connect,
        register or fail) are separate so that the async pool can await its
        connect between them: see :meth:`register` and :meth:`connect_failed`.

        ``reserved``, a one-item list the caller set to ``[True]`` with its
        ``pending += 1``, is set to False when a failure gives the slot back:
        a caller interrupted anywhere in between knows whether to give it back.
        """
        start = self.clock()
        epoch = self.epoch
        try:
            conn = self._connect()
        except BaseException:
            self.connect_failed(reserved)
            raise
        return self.register(conn, start, epoch, reserved)

    def register(
        self,
        conn: Any,
        start: float,
        epoch: int | None = None,
        reserved: list[bool] | None = None,
    ) -> PooledConnection:
        """Record a connection just opened for a reserved slot (started at ``start``).

        ``epoch`` is :attr:`epoch` read before connecting (a drain() meanwhile
        makes the connection one to close on arrival); default: the current one.
        No lock held. Returns its entry, still counted as pending. If it can't be
        recorded, it is closed, the reservation given back and the error raised.
        """
        try:
            entry = PooledConnection(
                conn,
                self.driver.fileno(conn),
                self.driver.session_state(conn),
                self.clock(),
            )
            entry.epoch = self.epoch if epoch is None else epoch
            self.watcher.add(entry.fd)
            if self.track_dropped:
                entry.ref = weakref.ref(conn, partial(_on_dropped, self.dropped, entry))
        except BaseException:
            self.driver.close(conn)
            self.connect_failed(reserved)
            raise
        seconds = entry.created_at - start
        with self.lock:
            self.connections_num += 1
            self.connections_ms += int(seconds * 1000)
            if self.create_times is not None:
                self.create_times.append(seconds)
            size = self.size
        logger.debug(
            "pool %r: opened a connection in %.1f ms (%d now)", self.name, seconds * 1000, size
        )
        return entry

    def connect_failed(self, reserved: list[bool] | None = None) -> None:
        """A connection attempt for a reserved slot failed: give the slot back. No lock held."""
        with self.lock:
            self.pending -= 1
            if reserved is not None:
                reserved[0] = False
            self.connections_num += 1
            self.connections_errors += 1

    def lend_new_locked(self, entry: PooledConnection) -> None:
        """A new connection goes to the borrower that opened it. Lock held.

        The caller has already taken it off ``pending``.
        """
        entry.borrowed_at = self.clock()
        self.in_use[id(entry.conn)] = entry

    # -- lending -------------------------------------------------------------

    def is_alive(self, entry: PooledConnection) -> bool:
        """The zero-round-trip liveness check; no lock needed (the caller owns ``entry``).

        The socket of a connection returned moments ago (``RECENTLY_USED``)
        is not looked at again; the driver's closed flag always is.
        """
        if self.clock() - entry.idle_since < RECENTLY_USED:
            return not self.driver.is_closed(entry.conn)
        return is_alive(self.driver, entry.conn, entry.fd, self.watcher)

    # -- returning -----------------------------------------------------------

    def give_back_locked(self, entry: PooledConnection, now: float) -> None:
        """A clean connection goes to the oldest waiter, else on top of the idle stack. Lock held.

        A returned one may still be in ``in_use``, and is best left there: it is
        then counted wherever an interrupt lands (see :meth:`hand_locked`). One
        from ``pending`` has been taken off it by the caller.
        """
        if self.waiters and self.hand_locked(entry, now):
            return
        entry.idle_since = now
        self.idle.append(entry)
        self.in_use.pop(id(entry.conn), None)  # after the append: never on neither side

    def hand_locked(self, entry: PooledConnection, now: float) -> bool:
        """Hand a clean connection to the oldest waiter still waiting; False if none. Lock held.

        The entry is in ``in_use`` from before any waiter can have it, and stays
        there on False, for the caller to move.
        """
        waiters = self.waiters
        # Counted in use before the waiter has it, with stores only: an interrupt
        # landing in hand() leaves the books right.
        entry.borrowed_at = now
        entry.owner = 0  # in transit: the waiter makes itself the owner
        self.in_use[id(entry.conn)] = entry
        while waiters:
            # A thread waiter that times out removes itself under the lock, so the
            # handoff can't be lost; a task that stopped waiting is skipped.
            waiter = waiters[0]
            del waiters[0]  # not popleft(): an interrupt can land when a call returns
            if waiter.hand(entry):
                if self.wait_times is not None:
                    self.wait_times.append(time.monotonic() - waiter.since)
                return True
        return False

    def reclaim_dropped_locked(self) -> int:
        """Free the slots of lent connections that their borrower dropped. Lock held."""
        reclaimed = 0
        in_use = self.in_use
        dropped = self.dropped
        while dropped:
            entry = dropped[0]
            found = None
            for ident, held in in_use.items():
                if held is entry:
                    found = ident
                    break
            # Stores only from here (interrupt safety): dequeued and freed together.
            del dropped[0]
            if found is not None:
                del in_use[found]
                reclaimed += 1
                if self.use_times is not None:  # held until the pool noticed
                    self.use_times.append(self.clock() - entry.borrowed_at)
        return reclaimed

    def lent(self) -> list[Loan]:
        """The connections lent now, longest held first (see ``_loans.py``)."""
        raw = self.still(lambda: lent_locked(self, self.clock()))
        return loans(raw)

    # -- idle expiry ---------------------------------------------------------

    def pop_expired_idle_locked(
        self,
        max_idle: float,
        floor: int,
        now: float,
        into: list[PooledConnection] | None = None,
    ) -> list[PooledConnection]:
        """Remove connections idle over ``max_idle`` seconds while more than ``floor`` exist.

        The idle stack is LIFO, so the longest-idle connections sit at its
        bottom: only they are looked at. Lock held; close the result without it.
        Each one is retired and appended to ``into`` (a list the caller closes
        in a ``finally``) with no call in between, so an interrupt can't strand one.
        """
        expired: list[PooledConnection] = [] if into is None else into
        idle = self.idle
        staying = self.size - self.closing  # those being closed don't count towards the floor
        while idle and staying > floor and now - idle[0].idle_since > max_idle:
            entry = idle[0]
            entry.close_reason = "idle"
            del idle[0]
            self.closing += 1
            expired.append(entry)
            staying -= 1
        return expired

    def pop_dead_idle_locked(
        self, into: list[PooledConnection] | None = None
    ) -> list[PooledConnection]:
        """Remove idle connections whose socket shows they are dead. Lock held.

        Each is retired and appended to ``into`` together (see pop_expired_idle_locked).
        """
        driver, watcher = self.driver, self.watcher
        dead: list[PooledConnection] = [] if into is None else into
        idle = self.idle
        for entry in [e for e in idle if not is_alive(driver, e.conn, e.fd, watcher)]:
            index = idle.index(entry)
            entry.close_reason = "dead"
            del idle[index]
            self.connections_lost += 1
            self.closing += 1
            dead.append(entry)
        return dead


def _on_dropped(dropped: deque[PooledConnection], entry: PooledConnection, _ref: object) -> None:
    dropped.append(entry)


# Registered here, after the imports above: _network (through _health) registers the
# watchdog's hook first, so a child resets the watchdog before the pools, whose
# after_fork may start threads that arm it.
os.register_at_fork(after_in_child=_after_fork_in_child)
