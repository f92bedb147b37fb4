"""The slow paths of :class:`~psycopool.AsyncConnectionPool`'s borrow and return.

``getconn`` and ``putconn`` (``_lending_async.py``) lend and keep a connection
with no await that suspends and no lock; whatever they cannot decide there,
they hand to this mixin, kept apart so that the hot paths stay short enough to
read whole: the check before a connection is lent, waiting in the queue as a
future, leaving it when cancelled, and cleaning, keeping or closing a return.
These paths take the lock, for readers on other threads (see ``Engine.lock``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any

from psycopool._base import CT, BasePool
from psycopool._drivers import IDLE, AsyncDriver, hide_password
from psycopool._entries import FutureWaiter, PooledConnection
from psycopool._health import aping, is_alive
from psycopool._loans import Stack, borrower
from psycopool._reset import aclean

if TYPE_CHECKING:
    from psycopool._upkeep_async import AsyncUpkeep

logger = logging.getLogger("psycopool")


class AsyncLendingSlowPaths(BasePool[CT]):
    """What AsyncLendingPool's getconn / putconn hand over: checks, waiting, cleaning."""

    _upkeep: AsyncUpkeep
    _adriver: AsyncDriver
    _loop: asyncio.AbstractEventLoop | None
    _reset_extra: Any

    def _place_new_locked(self, entry: PooledConnection) -> bool:
        """A new connection goes to the oldest waiter, else idle (see below). Lock held."""
        return self._give_back_locked(entry, self._engine.clock())

    # -- borrowing: checks, waiting, cancellation ----------------------------

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
                        self._make_room_to_wait_locked()
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

    # -- returning: cleaning, keeping, closing -------------------------------

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


async def maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
