"""The slow paths of :class:`~psycopool.ConnectionPool`'s borrow and return.

``getconn`` and ``putconn`` (``_lending.py``) lend and keep a connection under
one lock with no I/O; whatever they cannot decide there, they hand to this
mixin, kept apart so that the hot paths stay short enough to read whole: the
check before a connection is lent, waiting in the queue, giving back an
interrupted borrow, and cleaning, keeping or closing a return.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from psycopool._base import CT, BasePool
from psycopool._drivers import IDLE, hide_password
from psycopool._entries import PooledConnection, Waiter, stale_return
from psycopool._health import ping
from psycopool._loans import Stack
from psycopool._reset import clean

if TYPE_CHECKING:
    from psycopool._upkeep import Upkeep

logger = logging.getLogger("psycopool")


class LendingSlowPaths(BasePool[CT]):
    """What LendingPool's getconn / putconn hand over: checks, waiting, cleaning."""

    _upkeep: Upkeep
    _reset_extra: Any
    #: open="lazy" (ConnectionPool): the first borrow in a process opens the pool.
    _lazy = False
    # LendingPool's settings and precomputed flags (see _init_lending), read here too.
    close_returns: bool
    _keeps_idle: bool
    _lend_extras: bool
    _keep_clean: bool
    _psycopg2: bool

    if TYPE_CHECKING:  # LendingPool's: _unwind gives an unlent connection back by it

        def putconn(self, conn: CT) -> None: ...

    def _open_lazily(self) -> None:
        """Open a lazy pool at its first borrow; ConnectionPool implements it."""

    # -- borrowing: checks, waiting, interrupts ------------------------------

    def _getconn_slow(self, timeout: float | None, me: int, entry: PooledConnection | None) -> CT:
        """Check ``entry`` (popped by getconn, or None), then wait and retry until the deadline."""
        waiter: Waiter | None = None
        try:
            if timeout is None:
                timeout = self.timeout
            if not self._usable and self._lazy:
                self._open_lazily()
            engine = self._engine
            lock = engine.lock
            deadline = 0.0
            while True:
                if entry is not None:
                    # Popped from the idle stack, or handed over by a return or a connector.
                    conn = entry.conn
                    expired = self.clock() >= entry.expires_at
                    if not expired:
                        if not deadline:
                            deadline = time.monotonic() + timeout
                        if self._passes_check(entry, deadline):
                            return self._lend(entry)  # type: ignore[no-any-return]
                    self._drop(entry, conn, lost=not expired)
                    entry = None
                waiter = None
                with lock:
                    if not self._usable:
                        raise self._closed_error()
                    idle = engine.idle
                    if idle:
                        taken = idle[-1]
                        ident = id(taken.conn)
                        del idle[-1]
                        taken.owner = me
                        engine.in_use[ident] = taken
                        entry = taken
                    else:
                        self._make_room_to_wait_locked()
                        queued = Waiter()
                        waiter = queued
                        engine.waiters.append(queued)
                        self._requests_queued += 1
                if not deadline:
                    deadline = time.monotonic() + timeout
                if waiter is not None:
                    entry = self._wait(waiter, deadline, timeout, me)
                    waiter = None
        except BaseException:
            self._unwind(entry, waiter, me)
            raise

    def _unwind(self, entry: PooledConnection | None, waiter: Waiter | None, me: int) -> None:
        """An interrupted or failed borrow: leave the queue, give back what is not lent yet."""
        engine = self._engine
        with engine.lock:
            if waiter is not None and entry is None:
                handed = waiter.entry
                if handed is None:
                    if waiter in engine.waiters:
                        engine.waiters.remove(waiter)
                elif handed.owner == 0 and handed.conn is not None:
                    handed.owner = me  # in transit to this waiter: it is ours to give back
                    entry = handed
            conn = None if entry is None else entry.conn
            ours = (
                entry is not None
                and conn is not None
                and entry.owner == me
                and engine.in_use.get(id(conn)) is entry
            )
        if ours:
            self.putconn(conn)  # type: ignore[arg-type]

    def _lend(self, entry: PooledConnection) -> Any:
        """Hand the connection out: from now on only the borrower keeps it alive."""
        conn = entry.conn
        entry.conn = None
        entry.borrowed_at = self.clock()
        if self._lend_extras:
            self._mark_lent(entry, conn, 3)
        return conn

    def _mark_lent(self, entry: PooledConnection, conn: Any, depth: int) -> None:
        """What only some pools record at lend: the borrower's stack, the pool on the connection.

        ``depth``: the pool's own frames between the borrower and this method.
        """
        if self.leak_timeout is not None:
            entry.stack = Stack(1 + depth)
            entry.borrower = entry.owner
            entry.leak_reported = False
        if self.close_returns:
            conn._pool = self

    def _passes_check(self, entry: PooledConnection, deadline: float) -> bool:
        """Run the configured check on a connection about to be lent.

        A ping still unanswered at the borrower's ``deadline`` fails.
        """
        policy = self.check_policy
        if policy is None:
            return not self._driver.is_closed(entry.conn)
        if not self._engine.is_alive(entry):
            return False
        if policy == "liveness":
            return True
        if policy == "ping":
            return ping(self._driver, entry.conn, entry.fd, deadline)
        try:
            policy(entry.conn)
        except Exception as exc:
            logger.info("pool %r: check failed: %s", self.name, hide_password(str(exc).strip()))
            return False
        return self._driver.transaction_status(entry.conn) == IDLE

    def _drop(self, entry: PooledConnection, conn: Any, *, lost: bool) -> None:
        """Discard a connection that failed its check or outlived max_lifetime; ask for another."""
        engine = self._engine
        # A check of the socket or a ping that fails means the session ended.
        reason = ("failed check" if callable(self.check_policy) else "dead") if lost else "expired"
        retired = False
        try:
            with engine.lock:
                ident = id(conn)
                if engine.in_use.get(ident) is entry:
                    entry.close_reason = reason
                    del engine.in_use[ident]
                    engine.closing += 1
                    retired = True
                    if lost:
                        engine.connections_lost += 1
                    else:
                        self._settings.counters["connections_recycled"] += 1
        finally:
            if retired:
                engine.close_one(entry)
        self._upkeep.request_connections()

    def _wait(self, waiter: Waiter, deadline: float, timeout: float, me: int) -> PooledConnection:
        """Wait in the FIFO queue until handed a connection (now owned by ``me``), or time out."""
        self._upkeep.request_connections()
        engine = self._engine
        started = time.monotonic()
        # Interrupted (KeyboardInterrupt...): the borrow's handler (_unwind) leaves
        # the queue and gives back a connection handed over meanwhile.
        waiter.wait(max(0.0, deadline - started))
        waited = time.monotonic() - started
        with engine.lock:
            self._requests_wait_ms += int(waited * 1000)
            entry = waiter.entry
            if entry is None:
                try:
                    engine.waiters.remove(waiter)
                except ValueError:
                    pass  # the pool was closed: close() emptied the queue
                self._requests_errors += 1
                if not self._closed:
                    engine.timeouts += 1
            else:
                entry.owner = me
        if entry is not None:
            self._log_slow_wait(waited)
            return entry
        if self._closed:
            raise self._closed_error()
        raise self._timeout_error(timeout)

    # -- returning: cleaning, keeping, closing -------------------------------

    def _putconn_slow(self, conn: Any, me: int) -> None:
        """Every return but the usual one: matched to its loan, then kept, cleaned or closed."""
        engine = self._engine
        driver = self._driver
        with engine.lock:
            ident = id(conn)
            entry = engine.in_use.get(ident)
            if entry is None or (entry.owner != me and stale_return(entry, me)):
                if entry is None and self._closed:
                    # Lent before close(timeout) gave up waiting for it: close() has
                    # closed it already; returning it is still fine.
                    if self.close_returns:
                        conn._pool = None
                    driver.close(conn)
                    return
                raise self._not_lent_error(conn)
            c: Any = conn
            if self.close_returns:
                c._pool = None
            now = engine.clock()
            held = now - entry.borrowed_at
            use_times = engine.use_times
            if use_times is not None:  # an exporter is attached (see _timings.py)
                use_times.append(held)
            fast = (
                self._keep_clean
                and self._usable
                and not self._shrinking
                and now < entry.expires_at
                and (
                    # Psycopg2Driver.is_clean() inlined (public attributes only).
                    c.get_transaction_status() == IDLE
                    and (c.autocommit, c.isolation_level, c.readonly, c.deferrable) == entry.state
                    if self._psycopg2
                    else driver.is_clean(conn, entry.state)
                )
            )
            # Decided: now the books change with stores only (interrupt safety).
            entry.returner = me
            self._usage += held
            entry.conn = c
            if fast:
                # The usual case, decided under one lock with no I/O:
                # Engine.give_back_locked(), its common branch inlined.
                if engine.waiters:  # handed over from in_use: never off the books
                    engine.give_back_locked(entry, now)
                else:
                    entry.idle_since = now
                    del engine.in_use[ident]
                    engine.idle.append(entry)
                return
            del engine.in_use[ident]
            engine.pending += 1
            reserved = [True]
        try:
            self._return_slow(entry, conn, reserved)
        except BaseException:
            if reserved[0]:  # interrupted before _return_slow took the slot over
                with engine.lock:
                    engine.pending -= 1
                    engine.closing += 1
                    entry.close_reason = "interrupted"
                engine.close_one(entry)
            raise

    def _return_slow(self, entry: PooledConnection, conn: Any, reserved: list[bool]) -> None:
        """Clean a returned connection outside the lock, then keep it or close it.

        The connection is counted pending; that slot is released whatever
        happens: interrupted while cleaning, the connection is closed.
        """
        engine = self._engine
        driver = self._driver
        interrupted = True
        broken = ok = expired = False
        try:
            broken = driver.is_closed(conn)
            ok = not broken and not self._closed
            if ok:
                if self.reset_policy is None:
                    ok = driver.transaction_status(conn) == IDLE or clean(
                        driver, conn, entry.state, session_sql=self._session_sql, name=self.name
                    )
                else:
                    ok = clean(
                        driver,
                        conn,
                        entry.state,
                        self._reset_extra,
                        session_sql=self._session_sql,
                        name=self.name,
                    )
            expired = engine.clock() >= entry.expires_at
            interrupted = False
        finally:
            with engine.lock:
                now = engine.clock()
                size = engine.size  # the same after this return: pending -1, idle or closing +1
                drained = entry.epoch != engine.epoch
                keep = (
                    ok
                    and not interrupted
                    and not expired
                    and not drained
                    and not self._closed
                    and size <= engine.max_size
                    and (self._keeps_idle or len(engine.waiters) > 0)
                )
                reason = None
                if not keep:
                    reason = (
                        "interrupted"
                        if interrupted
                        else self._return_reason(broken, ok, drained, expired)
                    )
                    if ok and not interrupted and (drained or expired):
                        key = "connections_drained" if drained else "connections_recycled"
                        self._settings.counters[key] += 1
                if broken:
                    self._returns_bad += 1
                if self._shrinking:
                    self._shrinking = size > engine.max_size
                hand = keep and len(engine.waiters) > 0
                # Decided: the books change with stores only (interrupt safety).
                engine.pending -= 1
                reserved[0] = False
                if not keep:
                    entry.close_reason = reason
                    engine.closing += 1
                elif hand:
                    engine.give_back_locked(entry, now)
                else:
                    entry.idle_since = now
                    engine.idle.append(entry)
            if not keep:
                engine.close_one(entry)
                if not self._closed:
                    self._upkeep.request_connections()
