"""The asyncio pool: :class:`AsyncConnectionPool`, for psycopg 3's ``AsyncConnection``.

The same engine as the other front doors keeps the books; only waiting and
background work differ: a waiter is a future, upkeep and connecting are tasks.
The engine's lock is a ``threading.Lock``, never held across an ``await``
(nothing under it does I/O), so it costs an uncontended acquire on the loop.

Cancellation: a task cancelled (or timed out) while waiting leaves the queue;
one cancelled at the instant a connection was handed to it gives it back; one
cancelled while cleaning a returned connection closes it (its state is
unknown). The ``CancelledError`` is always re-raised, and every connection
stays counted exactly once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Generic

from psycopool._args import as_seconds
from psycopool._base import (
    CT,
    DEFAULT_NUM_WORKERS,
    BasePool,
    CheckPolicy,
    ResetPolicy,
    positive,
)
from psycopool._drivers import IDLE, INTRANS, get_async_driver, hide_password
from psycopool._engine import FutureWaiter, PooledConnection
from psycopool._errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from psycopool._health import RECENTLY_USED, aping, is_alive
from psycopool._loans import Stack, borrower
from psycopool._network import DEFAULT_NETWORK_TIMEOUT, interrupt, with_defaults
from psycopool._pooler import Pooler, connect_kwargs
from psycopool._readonly import aserver_turned_read_only
from psycopool._reset import aclean
from psycopool._upkeep_async import AsyncUpkeep, weak_method

logger = logging.getLogger("psycopool")


class AsyncConnectionPool(BasePool[CT]):
    """A pool of psycopg 3 ``AsyncConnection``: fair, checked, cleaned, cancellation-safe.

    Create it anywhere (no running loop needed), then ``await pool.open()`` or
    ``async with pool:`` inside the loop that will use it. See ``docs/async.md``.
    ``check``, ``configure``, ``reset``, ``conninfo`` and ``kwargs`` may be
    plain or ``async`` callables.
    """

    clock = staticmethod(time.monotonic)

    def __init__(
        self,
        conninfo: str | Callable[[], Any] = "",
        *,
        kwargs: Mapping[str, Any] | Callable[[], Any] | None = None,
        min_size: int = 4,
        max_size: int | None = None,
        timeout: float = 30.0,
        max_waiting: int = 0,
        max_idle: float | None = 600.0,
        max_lifetime: float | None = 3600.0,
        check: CheckPolicy = "liveness",
        configure: Callable[[Any], object] | None = None,
        reset: ResetPolicy = "rollback",
        leak_timeout: float | None = None,
        network_timeout: float | None = DEFAULT_NETWORK_TIMEOUT,
        connection_class: type[CT] | None = None,
        name: str | None = None,
        reconnect_timeout: float | None = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pooler: Pooler = None,
        close_returns: bool = False,
        open: bool = False,
    ) -> None:
        # Checked here: BasePool knows the sync drivers only.
        driver = get_async_driver("psycopg" if connection_class is None else connection_class)
        super().__init__(
            conninfo,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_waiting=max_waiting,
            max_idle=max_idle,
            max_lifetime=max_lifetime,
            check=check,
            configure=configure,
            reset=reset,
            leak_timeout=leak_timeout,
            network_timeout=network_timeout,
            driver="psycopg",
            name=name,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
            pooler=pooler,
        )
        self.connection_class = connection_class
        #: ``await conn.close()`` on a lent connection returns it instead (psycopg asks
        #: the pool through the connection's ``_pool`` attribute, as for psycopg_pool).
        self.close_returns = bool(close_returns)
        self._driver = self._adriver = driver
        self._is_clean = driver.is_clean  # bound once: the return's hot path calls it
        engine = self._engine
        engine.driver = driver
        engine.track_dropped = True
        self._reset_extra = self._reset_function(reset)
        self._upkeep = AsyncUpkeep(engine, self._settings, self._open_one, self._reconnect_failed)
        self._upkeep.place_locked = self._place_new_locked  # type: ignore[method-assign]
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Lend from the idle stack without a look at the socket when recently used.
        self._fast_lend = self._liveness_only and self.leak_timeout is None
        if open:
            self._start()

    # -- connecting ----------------------------------------------------------

    def _reconnect_failed(self) -> None:
        """Call ``reconnect_failed(pool)``; an async one runs as a task of the pool."""
        if self.reconnect_failed_callback is not None:
            result = self.reconnect_failed_callback(self)
            if inspect.isawaitable(result):
                self._upkeep.spawn(_maybe_await(result))

    def _reset_function(self, reset: ResetPolicy) -> Callable[[Any], object] | None:
        if reset == "discard":
            return self._discard_all
        if callable(reset):
            return reset
        return None

    async def _discard_all(self, conn: Any) -> None:
        """``DISCARD ALL``, then ``configure`` again: a discarded session is a new session."""
        await self._adriver.aexecute_autocommit(conn, "DISCARD ALL")
        if self._configure is not None:
            await _maybe_await(self._configure(conn))

    def _connect(self) -> Any:
        raise TypeError("an async pool connects with await (_open_one)")

    async def _open_one(self) -> Any:
        """Open one connection (called by connector tasks) and run ``configure`` on it."""
        conninfo = await _maybe_await(
            self._conninfo() if callable(self._conninfo) else self._conninfo
        )
        kwargs = self._kwargs() if callable(self._kwargs) else self._kwargs
        kwargs = await _maybe_await(kwargs) or {}
        driver = self._adriver
        # connect_timeout and network_timeout's options, where the user set none.
        kwargs = with_defaults(driver, conninfo, kwargs, self._connect_defaults)
        conn = await driver.aconnect(conninfo, connect_kwargs(self.pooler, driver.name, kwargs))
        if self.close_returns:
            conn._pool = self
        if self._configure is not None:
            try:
                await _maybe_await(self._configure(conn))
                status = driver.transaction_status(conn)
                if status == INTRANS:
                    await driver.acommit(conn)  # keep what configure set in a transaction
                elif status != IDLE:
                    raise PoolError(f"configure left the connection in status {status}")
            except BaseException:
                driver.close(conn)
                raise
        return conn

    def _place_new_locked(self, entry: PooledConnection) -> bool:
        """A new connection goes to the oldest waiter, else idle (see below). Lock held."""
        return self._give_back_locked(entry, self._engine.clock())

    def _give_back_locked(self, entry: PooledConnection, now: float) -> bool:
        """Keep a clean connection: a waiter's, else idle. Lock held.

        False (the null pool, with no waiter): it was retired instead; close it.
        """
        self._engine.give_back_locked(entry, now)
        return True

    # -- life cycle ----------------------------------------------------------

    def _start(self) -> None:
        if self._closed:
            raise self._err(
                PoolClosed, f"pool {self.name!r} is already closed: a closed pool can't be reopened"
            )
        if self._opened:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise self._err(
                PoolError,
                f"pool {self.name!r}: an AsyncConnectionPool opens inside a running event loop:"
                " create it with open=False, then 'await pool.open()' or 'async with pool:'"
                " in the loop that uses it",
            ) from None
        self._loop = loop
        self._opened = True
        self._usable = True
        self._upkeep.start(loop, weak_method(self._upkeep_pass))
        self._upkeep.request_connections()

    async def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the background tasks and open ``min_size`` connections.

        With ``wait=True``, return once they are open (see :meth:`wait`).
        Opening an open pool does nothing; a closed pool can't be reopened.
        """
        self._start()
        if wait:
            await self.wait(timeout)

    async def wait(self, timeout: float = 30.0) -> None:
        """Return once ``min_size`` connections are open; PoolTimeout after ``timeout`` seconds."""
        timeout = positive("timeout", timeout)
        deadline = time.monotonic() + timeout
        engine = self._engine
        while True:
            with engine.lock:
                ready = len(engine.idle) + len(engine.in_use) >= self.min_size
            if ready:
                return
            if self._closed:
                raise self._err(PoolClosed, f"pool {self.name!r} is closed")
            if not self._opened:
                raise self._closed_error()
            if time.monotonic() >= deadline:
                raise self._err(
                    PoolTimeout,
                    f"pool {self.name!r}: {self.min_size} connections not open after"
                    f" {timeout:.2f} s{self._last_error_hint()}",
                )
            await asyncio.sleep(0.005)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool and every connection it has.

        Waiters get :class:`PoolClosed`. Lent connections are closed when they
        come back; those still out after ``timeout`` seconds are closed then.
        Cancelled while waiting for them, it still closes everything before
        re-raising.
        """
        timeout = as_seconds("timeout", timeout, allow_none=False) or 0.0
        engine = self._engine
        with engine.lock:
            if self._closed:
                return
            self._closed = True
            self._usable = False
            engine.closed = True  # connectors now close what they open
            idle = list(engine.idle)
            engine.idle.clear()
            engine.retire_locked(*idle, reason="pool closed")
            while engine.waiters:
                engine.waiters.popleft().wake()
        engine.close(idle)
        tasks = self._upkeep.stop()
        try:
            deadline = time.monotonic() + timeout
            while True:
                with engine.lock:
                    if engine.dropped:  # lent, then garbage-collected: not coming back
                        engine.reclaim_dropped_locked()
                    lent = len(engine.in_use) + engine.pending
                if not lent or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.005)
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for task in tasks:
                task.cancel()  # connectors still connecting after the timeout
            with engine.lock:
                leftovers = engine.close_all_locked()
            for entry in leftovers:
                # A borrower may be stuck on it (a dead network): its wait ends now.
                stuck = entry.conn if entry.ref is None else entry.ref()
                if stuck is not None:
                    interrupt(self._driver, stuck)
            if leftovers:
                logger.warning(
                    "pool %r: closing %d connections still lent after %.2f s",
                    self.name,
                    len(leftovers),
                    timeout,
                )
            engine.close(leftovers)
            engine.watcher.close()

    async def __aenter__(self) -> AsyncConnectionPool[CT]:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        upkeep = getattr(self, "_upkeep", None)
        if upkeep is not None and not getattr(self, "_closed", True):
            upkeep._stopped = True  # the upkeep task ends at its next tick

    # -- borrowing -----------------------------------------------------------

    async def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is not None and (type(timeout) is not float or not timeout > 0.0):
            timeout = positive("timeout", timeout)  # checked in full only if unusual
        engine = self._engine
        lock = engine.lock
        lock.acquire()  # not `with`: its two method lookups cost more than the lock
        try:
            if self._usable and engine.idle:
                self._requests_num += 1
                entry = engine.idle.pop()
                conn = entry.conn
                engine.in_use[id(conn)] = entry
            else:
                entry = None
        finally:
            lock.release()
        if entry is not None:
            now = self.clock()
            if (
                self._fast_lend
                and now - entry.idle_since < RECENTLY_USED
                and now < entry.expires_at
            ):
                # The hot path, with no await that suspends: _lend() inlined. Returned
                # clean (so open) less than RECENTLY_USED ago, and untouched since.
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
                elif await self._checked(entry):
                    return self._lend(entry)
                self._drop(entry, conn, "lost")
                entry = None
                continue
            assert entry is not None
            conn = entry.conn
            now = self.clock()
            if now < entry.expires_at and await self._checked(entry):
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

    async def _checked(self, entry: PooledConnection) -> bool:
        """Run the configured check; interrupted (cancelled), the connection is closed."""
        try:
            return await self._passes_check(entry)
        except BaseException:
            self._drop(entry, entry.conn, None)
            raise

    async def _passes_check(self, entry: PooledConnection) -> bool:
        policy = self.check_policy
        conn = entry.conn
        if policy is None:
            return not self._driver.is_closed(conn)
        if not self._engine.is_alive(entry):
            return False
        if policy == "liveness":
            return True
        if policy == "ping":
            return await aping(self._adriver, conn)
        try:
            await _maybe_await(policy(conn))
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
        lock = engine.lock
        lock.acquire()
        try:
            entry = engine.in_use.pop(id(conn), None)
            if entry is not None:
                entry.conn = conn
                now = engine.clock()
                held = now - entry.borrowed_at
                self._usage += held
                use_times = engine.use_times
                if use_times is not None:  # an exporter is attached (see _timings.py)
                    use_times.append(held)
                # (No epoch test: drain() gives lent connections an expiry in the past.)
                if (
                    self._rollback_only
                    and self._usable
                    and not self._shrinking
                    and now < entry.expires_at
                    and self._is_clean(conn, entry.state)
                ):
                    # The usual case, decided under one lock with no I/O and no await:
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

    # -- maintenance ---------------------------------------------------------

    async def _upkeep_pass(self, check_all: bool = False) -> None:
        """One round of upkeep: reclaim dropped, report leaks, expire, (check), refill."""
        engine = self._engine
        with engine.lock:
            if self._closed:
                return
            chores = self._decide_upkeep_locked(self.clock(), check_all)
        self._report(chores)
        engine.close(chores.to_close)
        if chores.to_check:
            await self._check_idle(chores.to_check)
        self._upkeep.request_connections()

    async def _check_idle(self, entries: list[PooledConnection]) -> None:
        """Check connections taken off the idle stack (counted pending); keep the good ones."""
        engine = self._engine
        good: list[PooledConnection] = []
        bad: list[PooledConnection] = []
        try:
            for entry in entries:
                if engine.is_alive(entry) and await aping(self._adriver, entry.conn):
                    good.append(entry)
                else:
                    bad.append(entry)
        except BaseException:
            # Interrupted: the one being pinged and those not reached are closed.
            bad.extend(e for e in entries if e not in good and e not in bad)
            raise
        finally:
            with engine.lock:
                engine.pending -= len(entries)
                engine.connections_lost += len(bad)
                if self._closed:
                    bad.extend(good)
                    good = []
                now = engine.clock()
                for entry in good:
                    idle_since = entry.idle_since
                    if not self._give_back_locked(entry, now):
                        bad.append(entry)  # retired (null pool): closed below, not lost
                    entry.idle_since = idle_since  # a check is not a use: max_idle still counts
                if good:
                    ordered = sorted(engine.idle, key=lambda e: e.idle_since)
                    engine.idle.clear()
                    engine.idle.extend(ordered)
                engine.retire_locked(*bad, reason="dead")
            engine.close(bad)

    async def check(self) -> None:
        """Check every idle connection now (liveness and a round trip); replace the dead ones."""
        if self._closed or not self._opened:
            raise self._closed_error()
        await self._upkeep_pass(check_all=True)

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the sizes. Growth starts at once; excess idle connections are closed now,
        excess lent ones when they come back."""
        with self._engine.lock:
            self._resize_locked(min_size, max_size)
        if self._opened and not self._closed:
            await self._upkeep_pass()

    async def drain(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back."""
        engine = self._engine
        with engine.lock:
            if self._closed:
                return
            idle = self._drain_locked()
        engine.close(idle)
        if self._opened:
            self._upkeep.request_connections()

    async def _leave_read_only_server(self, conn: Any) -> None:
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
        await self.drain()


class _AsyncBorrowed(Generic[CT]):
    """The async context manager returned by :meth:`AsyncConnectionPool.connection`."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: AsyncConnectionPool[CT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> CT:
        self._conn = conn = await self._pool.getconn(self._timeout)
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


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value
