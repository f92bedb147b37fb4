"""Background work of an :class:`~psycopool.AsyncConnectionPool`: tasks instead of threads.

The same rules as ``_upkeep.py``: borrowers never connect; connector tasks
(at most ``num_workers`` at a time, one while failing) open connections and
hand each to the oldest waiter, or put it on the idle stack; after a failed
attempt a single connector retries with the shared :class:`Backoff`. One
upkeep task wakes periodically to run the pool's upkeep pass. Every task
runs on the pool's event loop; the upkeep task holds only a weak reference
to the pool, so an abandoned pool is still garbage-collected.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from psycopool._backoff import Backoff
from psycopool._base import Settings
from psycopool._engine import Engine
from psycopool._entries import PooledConnection
from psycopool._upkeep import record_failed_attempt, set_lifetime

logger = logging.getLogger("psycopool")

#: How often the upkeep task looks at the pool when nothing wakes it.
TICK = 0.5

PassFn = Callable[[], Awaitable[object]]


class AsyncUpkeep:
    """Connector tasks and the upkeep task of one async pool.

    ``connect`` opens one connection (awaited by a connector); ``gave_up`` is
    called once a run of failed attempts has lasted ``reconnect_timeout``.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        connect: Callable[[], Awaitable[Any]],
        gave_up: Callable[[], object] | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._connect = connect
        self._gave_up = gave_up
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = True
        self._wake: asyncio.Event | None = None
        self._connecting = 0  # connector tasks alive; under the engine lock
        self._backoff = Backoff(settings.reconnect_timeout)  # under the engine lock
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting_now: set[asyncio.Task[Any]] = set()  # connectors inside connect

    # -- life cycle ----------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, pass_fn: Callable[[], PassFn | None]) -> None:
        """Start the upkeep task on ``loop``; ``pass_fn()`` is the pass to run (None: pool gone)."""
        self._loop = loop
        self._stopped = False
        self._wake = asyncio.Event()
        self.spawn(_upkeep_loop(pass_fn, self._wake, self._tick(), self))

    def stop(self) -> list[asyncio.Task[None]]:
        """Stop every task; returns them, to be awaited by a caller that can.

        A connector in the middle of connecting is let finish (it then closes what it
        opened, the pool being closed): cancelled, a connect override that awaits after
        connecting would drop an open connection. The caller cancels what outlasts it.
        """
        self._stopped = True
        tasks = [t for t in self._tasks if not t.done()]
        current = asyncio.current_task() if self._running_here() else None
        for task in tasks:
            if task is not current and task not in self._connecting_now:
                task.cancel()
        return [t for t in tasks if t is not current]

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _running_here(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _tick(self) -> float:
        leak_timeout = self._settings.leak_timeout
        if leak_timeout:
            return max(0.01, min(TICK, leak_timeout / 4))
        return TICK

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` as one of this pool's tasks (cancelled by :meth:`stop`)."""
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connecting ----------------------------------------------------------

    def _wanted_locked(self) -> int:
        """Connections to open now: to reach min_size, and one per waiter not yet covered."""
        engine = self._engine
        room = engine.max_size - engine.size
        if room <= 0 or engine.closed or self._stopped:
            return 0
        need = max(self._settings.min_size - engine.size, len(engine.waiters) - engine.pending)
        return min(need, room)

    def request_connections(self) -> None:
        """Start connector tasks if connections are wanted. Call on the loop, without the lock."""
        engine = self._engine
        if engine.size >= engine.max_size or self._stopped:
            return  # full: nothing to open (the locked test below decides otherwise)
        with engine.lock:
            limit = 1 if self._backoff.failures else self._settings.num_workers
            start = min(self._wanted_locked(), limit - self._connecting)
            if start <= 0:
                return
            self._connecting += start
        for _ in range(start):
            self.spawn(self._connector())

    async def _connector(self) -> None:
        engine = self._engine
        counters = self._settings.counters
        try:
            while True:
                with engine.lock:
                    limit = 1 if self._backoff.failures else self._settings.num_workers
                    if self._wanted_locked() <= 0 or self._connecting > limit:
                        return
                    engine.pending += 1
                    epoch = engine.epoch
                start = engine.clock()
                task = asyncio.current_task()
                if task is not None:
                    self._connecting_now.add(task)
                try:
                    try:
                        conn = await self._connect()
                    finally:
                        self._connecting_now.discard(task)
                except asyncio.CancelledError:
                    with engine.lock:
                        engine.pending -= 1  # stopped: not a failed attempt
                    raise
                except Exception as exc:
                    engine.connect_failed()
                    await asyncio.sleep(self._failed(exc))
                    continue
                try:
                    entry = engine.register(conn, start, epoch)  # closes it if it fails
                except Exception as exc:
                    await asyncio.sleep(self._failed(exc))
                    continue
                self._set_lifetime(entry)
                with engine.lock:
                    engine.pending -= 1
                    recovered = self._backoff.succeeded()
                    if recovered:
                        counters["reconnects"] += 1
                    # Opened for an epoch drain() has ended since: not for keeping.
                    kept = not engine.closed and entry.epoch == engine.epoch
                    if kept:
                        kept = self.place_locked(entry)
                    else:
                        engine.retire_locked(entry)
                if recovered:
                    logger.warning(
                        "pool %r: connected again after %d failed attempts",
                        self._settings.name,
                        recovered,
                    )
                if not kept:
                    engine.close_one(entry)
        finally:
            with engine.lock:
                self._connecting -= 1

    def place_locked(self, entry: PooledConnection) -> bool:
        """Where a new connection goes: a waiter, else idle; False if retired instead. Lock held.

        Replaced by the null pool, which keeps nothing idle.
        """
        self._engine.give_back_locked(entry, self._engine.clock())
        return True

    def _failed(self, exc: Exception) -> float:
        """Record a failed attempt; return how long to wait before the next."""
        return record_failed_attempt(
            self._engine, self._backoff, self._settings, exc, self._gave_up
        )

    def _set_lifetime(self, entry: PooledConnection) -> None:
        set_lifetime(self._settings, entry)


async def _upkeep_loop(
    pass_fn: Callable[[], PassFn | None], wake: asyncio.Event, tick: float, upkeep: AsyncUpkeep
) -> None:
    ref = weakref.ref(upkeep)
    del upkeep
    while True:
        run = pass_fn()
        if run is None:
            return  # the pool was garbage-collected
        try:
            await run()
        except Exception:
            logger.exception("psycopool upkeep pass failed")
        del run
        try:
            await asyncio.wait_for(wake.wait(), tick)
        except asyncio.TimeoutError:
            pass
        wake.clear()
        current = ref()
        if current is None or current._stopped:
            return


def weak_method(fn: Callable[[], Awaitable[object]]) -> Callable[[], PassFn | None]:
    """A weak reference to a bound coroutine method."""
    return weakref.WeakMethod(fn)


__all__ = ["AsyncUpkeep", "weak_method"]
