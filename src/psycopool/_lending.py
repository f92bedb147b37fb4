"""Borrowing and returning: the hot path of :class:`~psycopool.ConnectionPool`.

``getconn`` takes the lock, pops the warmest idle connection, releases the
lock and checks it; a borrower that finds none queues (FIFO) and is handed
a connection by the next return or by a connector thread. ``putconn`` matches
the return to its loan (:func:`~psycopool._engine.stale_return`), then keeps
a clean connection under the same lock (or hands it to the oldest waiter),
else cleans it outside the lock. The configured ``check`` runs on every
connection handed out, whichever path it came by.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from psycopool._args import MAX_SECONDS
from psycopool._base import CT, BasePool, positive
from psycopool._borrowed import Borrowed
from psycopool._drivers import IDLE, get_driver, hide_password
from psycopool._engine import PooledConnection, Waiter, stale_return
from psycopool._errors import TooManyRequests
from psycopool._health import RECENTLY_USED, ping
from psycopool._loans import Stack
from psycopool._reset import clean

if TYPE_CHECKING:
    from psycopool._upkeep import Upkeep

logger = logging.getLogger("psycopool")
_get_ident = threading.get_ident


class LendingPool(BasePool[CT]):
    """getconn / putconn / connection() of the threaded pool."""

    _upkeep: Upkeep
    _reset_extra: Any
    #: With ``close_returns=True``: ``conn.close()`` returns a lent connection.
    close_returns = False
    #: Does a returned connection stay idle when no one waits? (Not in NullConnectionPool.)
    _keeps_idle = True
    #: open="lazy" (ConnectionPool): the first borrow in a process opens the pool.
    _lazy = False
    #: Precomputed by the constructor for the hot path (see _init_lending).
    _lend_extras = False
    _fast_return = True
    _psycopg2 = False

    def _open_lazily(self) -> None:
        """Open a lazy pool at its first borrow; ConnectionPool implements it."""

    def _init_lending(self) -> None:
        self._psycopg2 = self._driver.name == "psycopg2"
        self._lend_extras = self.leak_timeout is not None or self.close_returns
        self._fast_return = self._rollback_only and self._keeps_idle

    # -- borrowing -----------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is not None and (type(timeout) is not float or not 0.0 < timeout <= MAX_SECONDS):
            timeout = positive("timeout", timeout)  # checked in full only if unusual
        me = _get_ident()
        engine = self._engine
        lock = engine.lock
        entry = None
        lock.acquire()
        try:
            if self._usable:
                self._requests_num += 1
                idle = engine.idle
                if idle:
                    entry = idle.pop()
                    engine.in_use[id(entry.conn)] = entry
                    entry.owner = me
        finally:
            lock.release()
        if entry is not None:
            conn = entry.conn
            now = engine.clock()
            # Both drivers' connections have `closed`: true once closed or broken.
            if (
                self._liveness_only
                and now < entry.expires_at
                and now - entry.idle_since < RECENTLY_USED
                and not conn.closed
            ):
                # The hot path: _lend() inlined.
                entry.conn = None
                entry.borrowed_at = now
                if self._lend_extras:
                    self._mark_lent(entry, conn, 1)
                return conn  # type: ignore[no-any-return]
        return self._getconn_slow(timeout, me, entry)

    def _getconn_slow(self, timeout: float | None, me: int, entry: PooledConnection | None) -> CT:
        """Check ``entry`` (popped by getconn, or None), then wait and retry until the deadline."""
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
                    try:
                        passed = self._passes_check(entry, deadline)
                    except BaseException:
                        self.putconn(conn)  # interrupted: the connection goes back
                        raise
                    if passed:
                        return self._lend(entry)  # type: ignore[no-any-return]
                self._drop(entry, conn, lost=not expired)
                entry = None
            waiter: Waiter | None = None
            lock.acquire()
            try:
                if not self._usable:
                    raise self._closed_error()
                idle = engine.idle
                if idle:
                    entry = idle.pop()
                    engine.in_use[id(entry.conn)] = entry
                    entry.owner = me
                else:
                    if engine.dropped:
                        engine.reclaim_dropped_locked()
                    if self.max_waiting and len(engine.waiters) >= self.max_waiting:
                        self._requests_errors += 1
                        waiting = len(engine.waiters)
                        raise self._err(
                            TooManyRequests,
                            f"pool {self.name!r} already has {waiting} requests waiting",
                        )
                    waiter = Waiter()
                    engine.waiters.append(waiter)
                    self._requests_queued += 1
            finally:
                lock.release()
            if not deadline:
                deadline = time.monotonic() + timeout
            if waiter is not None:
                entry = self._wait(waiter, deadline, timeout, me)

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

    @staticmethod
    def check_connection(conn: Any) -> None:
        """A ``check`` that makes one round trip outside any transaction; raises if it fails.

        ``check=ConnectionPool.check_connection`` is psycopg_pool's spelling of
        ``check="ping"``; works with both drivers' connections.
        """
        get_driver(type(conn)).execute_autocommit(conn, "SELECT 1")

    def _drop(self, entry: PooledConnection, conn: Any, *, lost: bool) -> None:
        """Discard a connection that failed its check or outlived max_lifetime; ask for another."""
        engine = self._engine
        # A check of the socket or a ping that fails means the session ended.
        reason = ("failed check" if callable(self.check_policy) else "dead") if lost else "expired"
        with engine.lock:
            engine.in_use.pop(id(conn), None)
            engine.retire_locked(entry, reason=reason)
            if lost:
                engine.connections_lost += 1
            else:
                self._settings.counters["connections_recycled"] += 1
        engine.close_one(entry)
        self._upkeep.request_connections()

    def _wait(self, waiter: Waiter, deadline: float, timeout: float, me: int) -> PooledConnection:
        """Wait in the FIFO queue until handed a connection (now owned by ``me``), or time out."""
        self._upkeep.request_connections()
        engine = self._engine
        started = time.monotonic()
        try:
            waiter.event.wait(max(0.0, deadline - started))
        except BaseException:
            # Interrupted (KeyboardInterrupt...): leave the queue, and give back a
            # connection handed over meanwhile, or it would be lost to the pool.
            with engine.lock:
                handed = waiter.entry
                if handed is None and waiter in engine.waiters:
                    engine.waiters.remove(waiter)
                elif handed is not None:
                    handed.owner = me
            if handed is not None:
                self.putconn(handed.conn)
            raise
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

    def connection(self, timeout: float | None = None) -> Borrowed[CT]:
        """``with pool.connection() as conn:`` borrows; commits on success, rolls back on error.

        A connection closed inside the block ends it quietly: the pool discards
        it and opens a replacement.
        """

        return Borrowed(self, timeout)

    # -- returning -----------------------------------------------------------

    def putconn(self, conn: CT) -> None:
        """Return a borrowed connection: cleaned and kept (or handed to a waiter), or closed.

        ``ValueError`` if the pool did not lend it, it was already returned,
        or the return is a stale one (see ``stale_return`` in ``_engine.py``).
        """
        me = _get_ident()
        engine = self._engine
        driver = self._driver
        lock = engine.lock
        lock.acquire()
        try:
            entry = engine.in_use.pop(id(conn), None)
            if entry is None or (entry.owner != me and stale_return(entry, me)):
                if entry is not None:
                    engine.in_use[id(conn)] = entry  # lent to someone else: untouched
                elif self._closed:
                    # Lent before close(timeout) gave up waiting for it: close() has
                    # closed it already; returning it is still fine.
                    if self.close_returns:
                        conn._pool = None  # type: ignore[attr-defined]
                    driver.close(conn)
                    return
                raise self._not_lent_error(conn)
            entry.returner = me
            c: Any = conn
            entry.conn = c
            if self.close_returns:
                conn._pool = None  # type: ignore[attr-defined]
            now = engine.clock()
            held = now - entry.borrowed_at
            self._usage += held
            use_times = engine.use_times
            if use_times is not None:  # an exporter is attached (see _timings.py)
                use_times.append(held)
            if (
                self._fast_return
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
            ):
                # The usual case, decided under one lock with no I/O:
                # Engine.give_back_locked(), its common branch inlined.
                if engine.waiters:
                    engine.give_back_locked(entry, now)
                else:
                    entry.idle_since = now
                    engine.idle.append(entry)
                return
            engine.pending += 1
        finally:
            lock.release()
        self._return_slow(entry, conn)

    def _return_slow(self, entry: PooledConnection, conn: Any) -> None:
        """Clean a returned connection outside the lock, then keep it or close it."""
        engine = self._engine
        driver = self._driver
        broken = driver.is_closed(conn)
        ok = not broken and not self._closed
        try:
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
        except BaseException:
            # Interrupted while cleaning (KeyboardInterrupt, a BaseException from the
            # reset function): its state is unknown. Close it and free its slot.
            with engine.lock:
                engine.pending -= 1
                engine.retire_locked(entry, reason="interrupted")
            engine.close_one(entry)
            if not self._closed:
                self._upkeep.request_connections()
            raise
        expired = engine.clock() >= entry.expires_at
        with engine.lock:
            engine.pending -= 1
            if broken:
                self._returns_bad += 1
            drained = entry.epoch != engine.epoch
            keep = (
                ok
                and not expired
                and not drained
                and not self._closed
                and engine.size < engine.max_size
                and (self._keeps_idle or bool(engine.waiters))
            )
            if self._shrinking:
                self._shrinking = engine.size > engine.max_size
            if keep:
                engine.give_back_locked(entry, engine.clock())
            else:
                engine.retire_locked(
                    entry, reason=self._return_reason(broken, ok, drained, expired)
                )
            if not keep and ok:
                if drained:
                    self._settings.counters["connections_drained"] += 1
                elif expired:
                    self._settings.counters["connections_recycled"] += 1
        if not keep:
            engine.close_one(entry)
            if not self._closed:
                self._upkeep.request_connections()

    def _return_reason(self, broken: bool, ok: bool, drained: bool, expired: bool) -> str:
        """Why a returned connection is closed instead of kept, for the log."""
        if broken:
            return "broken"
        if self._closed:
            return "pool closed"
        if not ok:
            return "failed reset"
        if drained:
            return "drained"
        if expired:
            return "expired"
        return "resized" if self._keeps_idle else "not kept"

    def _leave_read_only_server(self, conn: Any) -> None:
        raise NotImplementedError  # ConnectionPool's
