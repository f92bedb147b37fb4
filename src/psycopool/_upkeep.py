"""Background work of a :class:`~psycopool.ConnectionPool`.

Borrowers never connect. When one has to wait, or the pool is below
``min_size``, connector threads (at most ``num_workers`` at a time) open
connections and hand each to the oldest waiter, or put it on the idle stack.
After a failed attempt a single connector retries with exponential backoff
(``_backoff.py``), and calls ``reconnect_failed`` once when failures have
lasted ``reconnect_timeout``.
One upkeep thread wakes periodically to refill ``min_size``, close idle
connections above ``min_size`` after ``max_idle``, recycle connections past
``max_lifetime``, reclaim the slots of connections a borrower dropped, and
report leaks. Every thread holds only a weak reference to the pool (through
its settings), so an abandoned pool is still garbage-collected.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Callable

from psycopool._backoff import BACKOFF_WAITING_MAX, Backoff
from psycopool._base import Settings
from psycopool._drivers import hide_password
from psycopool._engine import Engine
from psycopool._entries import PooledConnection

logger = logging.getLogger("psycopool")

#: How often the upkeep thread looks at the pool when nothing wakes it.
TICK = 0.5


class Upkeep:
    """Connector threads and the upkeep thread of one pool.

    ``gave_up`` (weakly held if a bound method) is called, in a connector
    thread, once a run of failed attempts has lasted ``reconnect_timeout``.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        gave_up: Callable[[], object] | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._gave_up = None if gave_up is None else _weak_callable(gave_up)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connecting = 0  # connector threads alive; under the engine lock
        # Consecutive failed attempts; under the engine lock.
        self._backoff = Backoff(settings.reconnect_timeout)
        self._threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------

    def start(self, pass_fn: Callable[[], object]) -> None:
        """Start the upkeep thread; ``pass_fn`` (weakly bound) runs one upkeep pass."""
        ref = _weak_callable(pass_fn)
        self._stop.clear()
        thread = threading.Thread(
            target=_upkeep_loop,
            args=(ref, self._stop, self._wake, self._tick()),
            name=f"psycopool-{self._settings.name}-upkeep",
            daemon=True,
        )
        self._thread = thread
        thread.start()
        self._threads.add(thread)

    def stop(self, timeout: float | None) -> list[threading.Thread]:
        """Ask every thread to end; wait up to ``timeout`` seconds. Returns those still running."""
        self._stop.set()
        self._wake.set()
        threads = [t for t in list(self._threads) if t is not threading.current_thread()]
        if timeout is not None:
            deadline = time.monotonic() + timeout  # a real wait: not the pool's clock
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive()]

    def reset_after_fork(self, pass_fn: Callable[[], object] | None) -> None:
        """In a forked child no thread survived: forget them and start afresh."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connecting = 0
        self._backoff = Backoff(self._settings.reconnect_timeout)
        self._threads = weakref.WeakSet()
        self._thread = None
        if pass_fn is not None:
            self.start(pass_fn)

    def wake(self) -> None:
        self._wake.set()

    def _tick(self) -> float:
        leak_timeout = self._settings.leak_timeout
        if leak_timeout:
            return max(0.01, min(TICK, leak_timeout / 4))
        return TICK

    # -- connecting ----------------------------------------------------------

    def _wanted_locked(self) -> int:
        """Connections to open now: to reach min_size, and one per waiter not yet covered."""
        engine = self._engine
        room = engine.max_size - engine.size
        if room <= 0 or engine.closed or self._stop.is_set():
            return 0
        need = max(self._settings.min_size - engine.size, len(engine.waiters) - engine.pending)
        return min(need, room)

    def request_connections(self) -> None:
        """Start connector threads if connections are wanted. Call without the lock."""
        engine = self._engine
        if engine.size >= engine.max_size:
            # Full: nothing to open (an unlocked look, so that a crowd of waiters on a
            # full pool doesn't queue on the lock for nothing; the locked test decides).
            return
        with engine.lock:
            limit = 1 if self._backoff.failures else self._settings.num_workers
            start = min(self._wanted_locked(), limit - self._connecting)
            if start <= 0:
                return
            self._connecting += start
        done = 0  # threads started or given up: the rest are still counted in _connecting
        try:
            for _ in range(start):
                thread = threading.Thread(
                    target=self._connector,
                    name=f"psycopool-{self._settings.name}-connect",
                    daemon=True,
                )
                try:
                    thread.start()
                except RuntimeError:  # interpreter shutting down: no new threads
                    with engine.lock:
                        self._connecting -= 1
                    done += 1
                    continue
                done += 1
                self._threads.add(thread)  # only started threads: stop() joins them
        finally:
            if done < start:  # interrupted (KeyboardInterrupt...): uncount the rest
                with engine.lock:
                    self._connecting -= start - done

    def _connector(self) -> None:
        engine = self._engine
        counters = self._settings.counters
        while True:
            with engine.lock:
                limit = 1 if self._backoff.failures else self._settings.num_workers
                if self._wanted_locked() <= 0 or self._connecting > limit:
                    self._connecting -= 1
                    return
                engine.pending += 1
            try:
                entry = engine.open_connection()
            except BaseException as exc:
                # Even a BaseException (from configure, a connection class...) is a failed
                # attempt: a connector thread ending here would keep its place for ever.
                delay = self._failed(exc)
                if self._pause(delay):
                    with engine.lock:
                        self._connecting -= 1
                    return
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
                    engine.give_back_locked(entry, engine.clock())
                else:
                    engine.retire_locked(
                        entry, reason="pool closed" if engine.closed else "drained"
                    )
            if recovered:
                logger.info(
                    "pool %r: connected again after %d failed attempts",
                    self._settings.name,
                    recovered,
                )
            if not kept:
                engine.close_one(entry)

    def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` before the next attempt; True if the pool is stopping.

        A borrower that starts waiting during a long delay (the pool was idle when the
        server went away) cuts it to ``BACKOFF_WAITING_MAX``: it is noticed within that.
        """
        start = time.monotonic()
        deadline = start + delay
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            if self._engine.waiters and now - start >= BACKOFF_WAITING_MAX:
                return False
            if self._stop.wait(min(deadline - now, BACKOFF_WAITING_MAX)):
                return True

    def _failed(self, exc: BaseException) -> float:
        """Record a failed attempt; return how long to wait before the next."""
        callback = self._gave_up() if self._gave_up is not None else None
        return record_failed_attempt(self._engine, self._backoff, self._settings, exc, callback)

    def _set_lifetime(self, entry: PooledConnection) -> None:
        set_lifetime(self._settings, entry)


def record_failed_attempt(
    engine: Engine,
    backoff: Backoff,
    settings: Settings,
    exc: BaseException,
    reconnect_failed: Callable[[], object] | None,
) -> float:
    """Record a failed connection attempt (both pools); return how long to wait before the next.

    Logs it (password masked), keeps it for timeout messages, and calls
    ``reconnect_failed`` once when ``reconnect_timeout`` has run out.
    """
    with engine.lock:
        waiting = bool(engine.waiters)
        # Real time, as waits; short while borrowers wait (a failover's new primary).
        delay, gave_up = backoff.failed(time.monotonic(), waiting=waiting)
        failures = backoff.failures
    message = hide_password(str(exc).strip()) or type(exc).__name__
    engine.last_connect_error = message
    logger.warning(
        "pool %r: connection attempt %d failed, next in %.2f s: %s",
        settings.name,
        failures,
        delay,
        message,
    )
    if gave_up:
        logger.warning(
            "pool %r: reconnecting has failed for %s s (reconnect_timeout)",
            settings.name,
            settings.reconnect_timeout,
        )
        if reconnect_failed is not None:
            try:
                reconnect_failed()
            except Exception:
                logger.exception("pool %r: reconnect_failed raised", settings.name)
    return delay


def set_lifetime(settings: Settings, entry: PooledConnection) -> None:
    """Each connection expires up to 10% before max_lifetime, so they don't all go together."""
    max_lifetime = settings.max_lifetime
    if max_lifetime is not None:
        entry.expires_at = entry.created_at + max_lifetime * (1.0 - 0.1 * random.random())


def _weak_callable(fn: Callable[[], object]) -> Callable[[], Callable[[], object] | None]:
    """A weak reference to a bound method (or a strong one to a plain function)."""
    if hasattr(fn, "__self__"):
        return weakref.WeakMethod(fn)
    return lambda: fn


def _upkeep_loop(
    ref: Callable[[], Callable[[], object] | None],
    stop: threading.Event,
    wake: threading.Event,
    tick: float,
) -> None:
    while not stop.is_set():
        pass_fn = ref()
        if pass_fn is None:
            return  # the pool was garbage-collected
        try:
            pass_fn()
        except Exception:
            logger.exception("psycopool upkeep pass failed")
        del pass_fn
        wake.wait(tick)
        wake.clear()


__all__ = ["Upkeep", "record_failed_attempt", "set_lifetime"]
