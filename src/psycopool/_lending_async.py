"""Borrowing and returning: the hot path of :class:`~psycopool.AsyncConnectionPool`.

``getconn`` pops the warmest idle connection and lends it without an ``await``
that suspends; a borrower that finds none queues (FIFO) as a future, handed a
connection by the next return or by a connector task. ``putconn`` keeps a clean
connection (or hands it to the oldest waiter), else cleans it outside the lock.
Their usual paths take no lock: the books are the loop thread's (see
``Engine.lock``); the rest takes it, for readers on other threads. Every
interruption (a cancel, a timeout) on these paths gives the connection back or
closes it, then re-raises: see the cancellation notes in ``_pool_async.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

from psycopool._args import MAX_SECONDS
from psycopool._base import CT, BasePool, positive
from psycopool._drivers import IDLE, AsyncDriver, hide_password
from psycopool._entries import FutureWaiter, PooledConnection
from psycopool._errors import PoolClosed, TooManyRequests
from psycopool._health import RECENTLY_USED, aping, is_alive
from psycopool._loans import Stack, borrower
from psycopool._readonly import aserver_turned_read_only
from psycopool._reset import aclean

if TYPE_CHECKING:
    from psycopool._upkeep_async import AsyncUpkeep

logger = logging.getLogger("psycopool")


class AsyncLendingPool(BasePool[CT]):
    """getconn / putconn / connection() of the asyncio pool."""

    _upkeep: AsyncUpkeep
    _adriver: AsyncDriver
    _loop: asyncio.AbstractEventLoop | None
    _reset_extra: Any
    _fast_lend = True
    #: With ``close_returns=True``: ``await conn.close()`` returns a lent connection.
    close_returns = False

    #: The driver's ``is_clean``, bound once by the pool: the return's hot path calls it.
    _is_clean: Any

    async def _leave_read_only_server(self, conn: Any) -> None:
        raise NotImplementedError

    def _place_new_locked(self, entry: PooledConnection) -> bool:
        """A new connection goes to the oldest waiter, else idle (see below). Lock held."""
        return self._give_back_locked(entry, self._engine.clock())

    def _give_back_locked(self, entry: PooledConnection, now: float) -> bool:
        """Keep a clean connection: a waiter's, else idle. Lock held.

        False (the null pool, with no waiter): it was retired instead; close it.
        """
        self._engine.give_back_locked(entry, now)
        return True

    # -- borrowing -----------------------------------------------------------

    async def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is not None and (type(timeout) is not float or not 0.0 < timeout <= MAX_SECONDS):
            timeout = positive("timeout", timeout)  # checked in full only if unusual
        engine = self._engine
        entry = None
        # No lock: only the loop's thread writes the books (see Engine.lock), and
        # the entry is recorded in use before it leaves the idle stack.
        if self._usable:
            idle = engine.idle
            if idle:
                self._requests_num += 1  # else counted by _getconn
                taken = idle[-1]
                engine.in_use[id(taken.conn)] = taken
                entry = taken
                idle.pop()  # last: an interrupt can land only after it returns
        if entry is not None:
            clock = engine.clock
            now = clock()
            if (
                self._fast_lend
                and now - entry.idle_since < RECENTLY_USED
                and now < entry.expires_at
            ):
                # The hot path, with no await that suspends: _lend() inlined. Returned
                # clean (so open) less than RECENTLY_USED ago, and untouched since.
                conn = entry.conn
                entry.conn = None
                entry.borrowed_at = now
                return conn  # type: ignore[no-any-return]
        return await self._getconn(self.timeout if timeout is None else timeout, entry)

    async def _getconn(self, timeout: float, entry: PooledConnection | None) -> CT:
        """Everything but the hot path: check ``entry`` (already taken), or wait in the queue."""
        engine = self._engine
        lock = engine.lock
        deadline = 0.0
        counted = entry is not None
        while True:
            waiter: FutureWaiter | None = None
            if entry is None:
                with lock:
                    if not self._usable:
                        raise self._closed_error()
                    if not counted:
                        counted = True
                        self._requests_num += 1
                    idle = engine.idle
                    if idle:
                        entry = idle.pop()
                        engine.in_use[id(entry.conn)] = entry
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
                        assert self._loop is not None
                        waiter = FutureWaiter(self._loop.create_future())
                        engine.waiters.append(waiter)
                        self._requests_queued += 1
            if waiter is not None:
                if not deadline:
                    deadline = time.monotonic() + timeout
                entry = await self._wait(waiter, deadline, timeout)
                # Handed over by a borrower or a connector: its socket is still looked
                # at (the server may have ended it while lent), and the configured check
                # runs on every connection lent, by every path.
                conn = entry.conn
                if self._liveness_only:
                    if is_alive(self._driver, conn, entry.fd, engine.watcher):
                        return self._lend(entry)
                elif await self._checked(entry, deadline):
                    return self._lend(entry)
                self._drop(entry, conn, "lost")
                entry = None
                continue
            assert entry is not None
            conn = entry.conn
            now = self.clock()
            if not deadline:
                deadline = time.monotonic() + timeout
            if now < entry.expires_at and await self._checked(entry, deadline):
                return self._lend(entry)
            self._drop(entry, conn, "lost" if now < entry.expires_at else "recycled")
            entry = None
            if not deadline:
                deadline = time.monotonic() + timeout

    def _lend(self, entry: PooledConnection) -> CT:
        """Hand the connection out: from now on only the borrower keeps it alive."""
        conn = entry.conn
        entry.conn = None
        entry.borrowed_at = self.clock()
        if self.leak_timeout is not None:
            entry.stack = Stack(2)
            entry.borrower = borrower()
            entry.leak_reported = False
        return conn  # type: ignore[no-any-return]

    async def _checked(self, entry: PooledConnection, deadline: float) -> bool:
        """Run the configured check; interrupted (cancelled), the connection is closed."""
        try:
            return await self._passes_check(entry, deadline)
        except BaseException:
            self._drop(entry, entry.conn, None)
            raise

    async def _passes_check(self, entry: PooledConnection, deadline: float) -> bool:
        policy = self.check_policy
        conn = entry.conn
        if policy is None:
            return not self._driver.is_closed(conn)
        if not self._engine.is_alive(entry):
            return False
        if policy == "liveness":
            return True
        if policy == "ping":
            # Ends by the borrower's deadline: a dead network or a frozen server can't hold it.
            return await aping(self._adriver, conn, entry.fd, deadline)
        try:
            await maybe_await(policy(conn))
        except Exception as exc:
            logger.info("pool %r: check failed: %s", self.name, hide_password(str(exc).strip()))
            return False
        return self._driver.transaction_status(conn) == IDLE

    @staticmethod
    async def check_connection(conn: Any) -> None:
        """A check that runs an empty statement: ``check=AsyncConnectionPool.check_connection``."""
        if conn.autocommit:
            await conn.execute("")
        else:
            await conn.set_autocommit(True)
            try:
                await conn.execute("")
            finally:
                await conn.set_autocommit(False)

    def _drop(self, entry: PooledConnection, conn: Any, why: str | None) -> None:
        """Discard a lent-to-be connection (failed check, expired, interrupted); ask for another."""
        engine = self._engine
        reason = {"lost": "dead", "recycled": "expired"}.get(why or "", "interrupted")
        if why == "lost" and callable(self.check_policy):
            reason = "failed check"
        with engine.lock:
            engine.in_use.pop(id(conn), None)
            engine.retire_locked(entry, reason=reason)
            if why == "lost":
                engine.connections_lost += 1
            elif why == "recycled":
                self._settings.counters["connections_recycled"] += 1
        engine.close_one(entry)
        if not self._closed:
            self._upkeep.request_connections()

    async def _wait(
        self, waiter: FutureWaiter, deadline: float, timeout: float
    ) -> PooledConnection:
        """Wait in the FIFO queue until handed a connection, or until the deadline."""
        self._upkeep.request_connections()
        engine = self._engine
        started = time.monotonic()
        assert self._loop is not None
        timer = self._loop.call_later(max(0.0, deadline - started), self._expire, waiter)
        try:
            entry = await waiter.future
        except BaseException:
            # Cancelled (or timed out by asyncio.timeout/wait_for): leave the queue,
            # and give back a connection handed over at that very instant.
            timer.cancel()
            self._abandon(waiter)
            raise
        timer.cancel()
        waited = time.monotonic() - started
        with engine.lock:
            self._requests_wait_ms += int(waited * 1000)
            if entry is None:
                self._requests_errors += 1
                if not self._closed:
                    engine.timeouts += 1
        if entry is not None:
            self._log_slow_wait(waited)
            return entry
        if self._closed:
            raise self._closed_error()
        raise self._timeout_error(timeout)

    def _expire(self, waiter: FutureWaiter) -> None:
        """The waiter's deadline passed: out of the queue, woken with no connection."""
        with self._engine.lock:
            if waiter.future.done():
                return
            try:
                self._engine.waiters.remove(waiter)
            except ValueError:
                pass
            waiter.future.set_result(None)

    def _abandon(self, waiter: FutureWaiter) -> None:
        """A waiting task was interrupted: forget it, or take back what it was handed."""
        engine = self._engine
        to_close = None
        with engine.lock:
            handed = waiter.entry
            if handed is None:
                try:
                    engine.waiters.remove(waiter)
                except ValueError:
                    pass  # skipped by a handoff, expired, or woken by close()
            elif engine.in_use.pop(id(handed.conn), None) is handed:
                # Handed clean and never used: straight back, no I/O.
                if not self._usable:
                    engine.retire_locked(handed)
                    to_close = handed
                elif not self._give_back_locked(handed, engine.clock()):
                    to_close = handed
        if to_close is not None:
            engine.close_one(to_close)

    def connection(self, timeout: float | None = None) -> _AsyncBorrowed[CT]:
        """``async with pool.connection() as conn:`` borrows; commits on success, else rolls back.

        A cancellation inside the block rolls back too, and is re-raised.
        """
        return _AsyncBorrowed(self, timeout)

    # -- returning -----------------------------------------------------------

    async def putconn(self, conn: Any) -> None:
        """Return a borrowed connection: cleaned and kept (or handed to a waiter), or closed."""
        engine = self._engine
        # The usual return, decided with no I/O and no await, and no lock (see
        # getconn); anything else takes _putconn_slow, which decides again.
        ident = id(conn)
        entry = engine.in_use.get(ident)
        if entry is not None and self._rollback_only and self._usable and not self._shrinking:
            now = engine.clock()
            # (No epoch test: drain() gives lent connections an expiry in the past.)
            try:
                # PsycopgInspector.is_clean() inlined: the fields behind psycopg's
                # public properties (a future psycopg without them: the driver's).
                clean = (
                    conn.pgconn.transaction_status == IDLE
                    and (
                        conn._autocommit,
                        conn._isolation_level,
                        conn._read_only,
                        conn._deferrable,
                    )
                    == entry.state
                )
            except AttributeError:
                clean = self._is_clean(conn, entry.state)
            if clean and now < entry.expires_at:
                held = now - entry.borrowed_at
                use_times = engine.use_times
                if use_times is not None:  # an exporter is attached (see _timings.py)
                    use_times.append(held)
                # Decided: the books change with stores, the call last.
                self._usage += held
                entry.conn = conn
                if engine.waiters:  # handed over from in_use: never off the books
                    engine.give_back_locked(entry, now)
                else:  # Engine.give_back_locked(), its common branch inlined
                    entry.idle_since = now
                    del engine.in_use[ident]
                    engine.idle.append(entry)
                return
        await self._putconn_slow(conn)

    async def _putconn_slow(self, conn: Any) -> None:
        """Every return but the usual one: kept, cleaned or closed; refused if not lent."""
        engine = self._engine
        with engine.lock:
            entry = engine.in_use.pop(id(conn), None)
            if entry is not None:
                entry.conn = conn
                now = engine.clock()
                held = now - entry.borrowed_at
                self._usage += held
                use_times = engine.use_times
                if use_times is not None:
                    use_times.append(held)
                engine.pending += 1
        if entry is None:
            if self._closed:
                # Lent before close(timeout) gave up waiting for it: close() has
                # closed it already; returning it is still fine.
                self._driver.close(conn)
                return
            raise self._not_lent_error(conn)
        await self._return_slow(entry, conn)

    async def _return_slow(self, entry: PooledConnection, conn: Any) -> None:
        """Clean a returned connection (no lock held), then keep it or close it."""
        engine = self._engine
        driver = self._adriver
        broken = driver.is_closed(conn)
        ok = not broken and not self._closed
        try:
            if ok:
                if self.reset_policy is None and driver.transaction_status(conn) == IDLE:
                    ok = True
                elif self.reset_policy is None:
                    ok = await aclean(driver, conn, entry.state, name=self.name)
                else:
                    ok = await aclean(driver, conn, entry.state, self._reset_extra, name=self.name)
        except BaseException:
            # Cancelled while cleaning: the connection's state is unknown. Close it.
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
            )
            if self._shrinking:
                self._shrinking = engine.size > engine.max_size
            if keep:
                keep = self._give_back_locked(entry, engine.clock())
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


class _AsyncBorrowed(Generic[CT]):
    """The async context manager returned by :meth:`AsyncConnectionPool.connection`."""

    __slots__ = ("_conn", "_loan", "_pool", "_timeout")

    def __init__(self, pool: AsyncLendingPool[CT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> CT:
        pool = self._pool
        self._conn = conn = await pool.getconn(self._timeout)
        if pool.close_returns:
            self._loan = _loan_of(pool, conn)
        return conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if pool.close_returns and _loan_of(pool, conn) != self._loan and not pool._closed:
            # `await conn.close()` in the block gave it back already (it may be lent
            # again since): nothing left to end or return.
            return
        try:
            if conn.closed:
                # Closed inside the block: the pool replaces it. Only a close by the
                # pool itself (closed meanwhile) loses a commit worth reporting.
                if exc_type is None and pool._closed:
                    raise pool._err(
                        PoolClosed,
                        f"pool {pool.name!r} was closed, and this connection with it, before"
                        " the block ended: its transaction was not committed",
                    )
            elif conn.pgconn.transaction_status != IDLE:
                if exc_type is None:
                    await pool._adriver.acommit(conn)
                else:
                    try:
                        await pool._adriver.arollback(conn)
                    except Exception:
                        pass  # the connection is broken: putconn discards it
                    else:
                        if await aserver_turned_read_only(pool._adriver, conn, exc):
                            await pool._leave_read_only_server(conn)
        finally:
            await pool.putconn(conn)


def _loan_of(pool: AsyncLendingPool[Any], conn: Any) -> float | None:
    """What tells this loan of ``conn`` from a later one (when lent); None: not lent."""
    engine = pool._engine
    with engine.lock:
        entry = engine.in_use.get(id(conn))
        return None if entry is None else entry.borrowed_at


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
