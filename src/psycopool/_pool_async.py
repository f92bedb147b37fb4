"""The asyncio pool: :class:`AsyncConnectionPool`, for psycopg 3's ``AsyncConnection``.

The same engine as the other front doors keeps the books; only waiting and
background work differ: a waiter is a future, upkeep and connecting are tasks.
The books belong to the loop's thread: the hot paths skip the engine's lock,
the other sections take it (never across an ``await``: nothing under it does
I/O), and readers on other threads run on the loop (``_loop_owner.py``).
The upkeep pass, check, resize and drain are its base ``AsyncMaintenance``
(``_maintenance_async.py``); construction and the life cycle are here.

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
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from psycopool._args import as_seconds
from psycopool._base import (
    CT,
    DEFAULT_NUM_WORKERS,
    CheckPolicy,
    ResetPolicy,
    positive,
)
from psycopool._drivers import IDLE, INTRANS, get_async_driver
from psycopool._engine import Engine
from psycopool._entries import PooledConnection
from psycopool._errors import PoolClosed, PoolError, PoolTimeout
from psycopool._lending_async import maybe_await
from psycopool._loop_owner import LoopOwner
from psycopool._maintenance_async import AsyncMaintenance
from psycopool._network import DEFAULT_NETWORK_TIMEOUT, interrupt, with_defaults
from psycopool._pooler import Pooler, connect_kwargs
from psycopool._upkeep_async import AsyncUpkeep, weak_method

logger = logging.getLogger("psycopool")


class AsyncConnectionPool(AsyncMaintenance[CT]):
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
        # The background work holds the pool weakly: an abandoned pool is then freed
        # by reference counting, its __del__ first (see there), not in a cycle.
        ref = weakref.ref(self)

        async def open_one() -> Any:
            pool = ref()
            if pool is None:
                raise PoolClosed("the pool was garbage-collected")
            return await pool._open_one()

        def gave_up() -> None:
            pool = ref()
            if pool is not None:
                pool._reconnect_failed()

        def place_locked(entry: PooledConnection) -> bool:
            pool = ref()
            if pool is None:
                engine.retire_locked(entry)
                return False
            return pool._place_new_locked(entry)

        self._upkeep = AsyncUpkeep(engine, self._settings, open_one, gave_up)
        self._upkeep.place_locked = place_locked  # type: ignore[method-assign]
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
                self._upkeep.spawn(maybe_await(result))

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
            await maybe_await(self._configure(conn))

    def _make_engine(self, max_size: int) -> Engine:
        # No bound method of the pool in the engine: no reference cycle (see __del__).
        return Engine(self._driver, _no_sync_connect, max_size=max_size, clock=self.clock)

    def _connect(self) -> Any:
        return _no_sync_connect()

    async def _open_one(self) -> Any:
        """Open one connection (called by connector tasks) and run ``configure`` on it."""
        conninfo = await maybe_await(
            self._conninfo() if callable(self._conninfo) else self._conninfo
        )
        kwargs = self._kwargs() if callable(self._kwargs) else self._kwargs
        kwargs = await maybe_await(kwargs) or {}
        driver = self._adriver
        # connect_timeout and network_timeout's options, where the user set none.
        kwargs = with_defaults(driver, conninfo, kwargs, self._connect_defaults)
        conn = await driver.aconnect(conninfo, connect_kwargs(self.pooler, driver.name, kwargs))
        if self.close_returns:
            conn._pool = self
        if self._configure is not None:
            try:
                await maybe_await(self._configure(conn))
                status = driver.transaction_status(conn)
                if status == INTRANS:
                    await driver.acommit(conn)  # keep what configure set in a transaction
                elif status != IDLE:
                    raise PoolError(f"configure left the connection in status {status}")
            except BaseException:
                driver.close(conn)
                raise
        return conn

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
        # From now on the books are this thread's (see Engine.lock and _loop_owner.py).
        self._engine.owner = LoopOwner(loop, threading.get_ident())
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
        # An abandoned pool: one warning naming it (not one per connection from
        # psycopg), its tasks told to stop, its idle connections closed (no I/O to await).
        upkeep = getattr(self, "_upkeep", None)
        if upkeep is None or getattr(self, "_closed", True) or not getattr(self, "_opened", 0):
            return
        self._closed = True
        self._usable = False
        upkeep._stopped = True  # the upkeep task ends at its next tick
        warnings.warn(
            f"psycopool: pool {self.name!r} was garbage-collected without being closed;"
            " use `async with AsyncConnectionPool(...) as pool:` or `await pool.close()`",
            ResourceWarning,
            stacklevel=2,
        )
        engine = self._engine
        if engine.lock.acquire(timeout=1.0):
            try:
                engine.closed = True
                idle = list(engine.idle)
                engine.idle.clear()
                engine.retire_locked(*idle)
            finally:
                engine.lock.release()
            try:
                engine.close(idle)
            except Exception:
                pass  # interpreter shutdown: the driver may be half gone


def _no_sync_connect() -> Any:
    raise TypeError("an async pool connects with await (_open_one)")
