"""What every modern pool shares, whatever its I/O: :class:`BasePool`.

Argument checks and settings, name and repr, counters, and the upkeep
*decisions* (which idle connections to expire, recycle or shrink, which
leaks to report, which to drain); statistics, error helpers and log lines
are its base :class:`~psycopool._reports.Reports`. Nothing here blocks,
waits or talks to a server: the threaded :class:`ConnectionPool` and the
asyncio pool do their I/O around these locked decisions.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, get_origin

from psycopool._args import as_count, as_seconds, as_timeout, show
from psycopool._args import check_sizes as _check_sizes
from psycopool._drivers import Driver, get_driver, hide_password
from psycopool._engine import Engine
from psycopool._entries import PooledConnection
from psycopool._errors import TooManyRequests
from psycopool._loans import Stack
from psycopool._network import (
    DEFAULT_NETWORK_TIMEOUT,
    check_network_timeout,
    network_options,
    with_defaults,
)
from psycopool._pooler import Pooler, check_pooler, connect_kwargs, session_sql
from psycopool._reports import UPKEEP_COUNTERS as UPKEEP_COUNTERS
from psycopool._reports import Reports

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    #: The connection class a pool lends (psycopg 3's ``connection_class``).
    CT = TypeVar("CT", default=Any)
else:  # typing_extensions is a type-checking aid only, never a runtime import
    from typing import TypeVar

    CT = TypeVar("CT")

logger = logging.getLogger("psycopool")

CheckPolicy = Literal["liveness", "ping"] | Callable[[Any], object] | None
ResetPolicy = Literal["rollback", "discard"] | Callable[[Any], object] | None

#: libpq's connect_timeout added when the user gives none, so a server that
#: hangs on connect can't hold a connector for ever.
DEFAULT_CONNECT_TIMEOUT = 10
#: Connections opened at the same time by default (``num_workers``): enough to
#: grow fast, few enough not to stampede the server (HikariCP's "spike" lesson).
DEFAULT_NUM_WORKERS = 4

_names = itertools.count(1)


@dataclass
class Settings:
    """The parts of a pool's configuration its background work reads; changed by resize()."""

    name: str
    min_size: int
    max_idle: float | None
    max_lifetime: float | None
    leak_timeout: float | None
    num_workers: int = DEFAULT_NUM_WORKERS
    reconnect_timeout: float | None = None
    #: Counters the background work updates (read by stats()).
    counters: Counter[str] = field(default_factory=Counter)


@dataclass
class Chores:
    """What one upkeep pass decided under the lock; the caller does the I/O."""

    #: Taken off the books (retired): close them.
    to_close: list[PooledConnection] = field(default_factory=list)
    #: Taken off the idle stack, counted pending: check them, then give back or close.
    to_check: list[PooledConnection] = field(default_factory=list)
    #: (seconds held, borrower's stack) of newly detected leaks.
    leaks: list[tuple[float, Stack | None]] = field(default_factory=list)
    #: Lent connections garbage-collected without being returned.
    reclaimed: int = 0


class BasePool(Reports, Generic[CT]):
    """Settings, statistics and locked upkeep decisions of a modern pool; no I/O."""

    def __init__(
        self,
        conninfo: str | Callable[[], str] = "",
        *,
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
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
        driver: Any = "psycopg2",
        connection_class: type[CT] | None = None,
        name: str | None = None,
        reconnect_timeout: float | None = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        num_workers: int = DEFAULT_NUM_WORKERS,
        pooler: Pooler = None,
    ) -> None:
        if not (isinstance(conninfo, str) or callable(conninfo)):
            raise TypeError(f"conninfo must be a string or a callable; got {type(conninfo)!r}")
        if not (kwargs is None or isinstance(kwargs, Mapping) or callable(kwargs)):
            # Masked: a conninfo string passed here by mistake holds the password.
            raise TypeError(
                f"kwargs must be a dict or a callable; got {hide_password(repr(kwargs))}"
            )
        min_size, max_size = _check_sizes(min_size, max_size)
        self.timeout = positive("timeout", timeout)
        self.max_waiting = as_count("max_waiting", max_waiting)
        self.max_idle = as_seconds("max_idle", max_idle, allow_zero=False)
        self.max_lifetime = as_seconds("max_lifetime", max_lifetime, allow_zero=False)
        self.leak_timeout = as_seconds("leak_timeout", leak_timeout, allow_zero=False)
        self.reconnect_timeout = as_seconds("reconnect_timeout", reconnect_timeout)
        self.network_timeout = check_network_timeout(network_timeout)
        #: Added to each connect's options where the user's conninfo and kwargs set none.
        self._connect_defaults: dict[str, Any] = {"connect_timeout": DEFAULT_CONNECT_TIMEOUT}
        if self.network_timeout is not None:
            self._connect_defaults.update(network_options(self.network_timeout))
        if reconnect_failed is not None and not callable(reconnect_failed):
            raise TypeError(
                f"reconnect_failed must be a callable or None; got {show(reconnect_failed)}"
            )
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1; got {show(num_workers)}")
        if not (check in ("liveness", "ping", None) or callable(check)):
            raise ValueError(
                f"check must be 'liveness', 'ping', None or a callable; got {show(check)}"
            )
        if not (reset in ("rollback", "discard", None) or callable(reset)):
            raise ValueError(
                f"reset must be 'rollback', 'discard', None or a callable; got {show(reset)}"
            )
        if configure is not None and not callable(configure):
            raise TypeError(f"configure must be a callable or None; got {show(configure)}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None; got {show(name)}")
        if connection_class is not None:
            cls = get_origin(connection_class) or connection_class  # MyConn[Row] -> MyConn
            if not isinstance(cls, type):
                raise TypeError(f"connection_class must be a class; got {show(connection_class)}")
            driver = cls  # its driver connects with it (psycopg 3 or psycopg2)
        self.name = name or f"pool-{next(_names)}"
        #: None, "session" or "transaction": what sits between the pool and the server.
        self.pooler = check_pooler(pooler, reset)
        self._session_sql = session_sql(self.pooler)
        self.check_policy = check
        self.reset_policy = reset
        self.connection_class = connection_class
        self.reconnect_failed_callback = reconnect_failed
        # Precomputed for the hot path.
        self._liveness_only = check == "liveness"
        self._rollback_only = reset == "rollback"
        self._conninfo = conninfo
        self._kwargs = kwargs
        self._configure = configure
        self._driver: Driver = get_driver(driver)
        self._error = self._driver.OperationalError
        self._engine = self._make_engine(max_size)
        self._engine.name = self.name
        self._settings = Settings(
            name=self.name,
            min_size=min_size,
            max_idle=self.max_idle,
            max_lifetime=self.max_lifetime,
            leak_timeout=self.leak_timeout,
            num_workers=num_workers,
            reconnect_timeout=self.reconnect_timeout,
        )
        self._opened = False
        self._closed = False
        self._usable = False  # opened and not closed: one test on the hot path
        self._shrinking = False  # resize() lowered max_size below the current size
        # Counters, updated under the engine lock.
        self._requests_num = 0
        self._requests_queued = 0
        self._requests_wait_ms = 0
        self._requests_errors = 0
        self._returns_bad = 0
        self._usage = 0.0  # seconds connections spent lent (usage_ms)

    def _make_engine(self, max_size: int) -> Engine:
        """The engine that keeps this pool's books (a subclass may supply its own)."""
        return Engine(self._driver, self._connect, max_size=max_size, clock=self.clock)

    def _connect(self) -> Any:
        raise NotImplementedError

    @staticmethod
    def clock() -> float:  # replaced by subclasses (time.monotonic); fake clocks in tests
        raise NotImplementedError

    # -- configuration -------------------------------------------------------

    @property
    def min_size(self) -> int:
        return self._settings.min_size

    @property
    def max_size(self) -> int:
        return self._engine.max_size

    @property
    def num_workers(self) -> int:
        """How many connections may be opened at the same time."""
        return self._settings.num_workers

    @property
    def closed(self) -> bool:
        """True before ``open()`` and after ``close()``."""
        return self._closed or not self._opened

    def __repr__(self) -> str:
        engine = self._engine
        state = "closed" if self._closed else ("open" if self._opened else "not open")
        return (
            f"<{type(self).__name__} {self.name!r} {state} min_size={self.min_size}"
            f" max_size={self.max_size} size={engine.size} idle={len(engine.idle)}"
            f" waiting={len(engine.waiters)} driver={self._driver.name}>"
        )

    def _connect_arguments(self) -> tuple[str, dict[str, Any]]:
        """conninfo and kwargs for one connect, with ``connect_timeout`` and
        ``network_timeout``'s options where the user's conninfo (parsed) and kwargs set none."""
        conninfo = self._conninfo() if callable(self._conninfo) else self._conninfo
        kwargs = self._kwargs() if callable(self._kwargs) else (self._kwargs or {})
        kwargs = with_defaults(self._driver, conninfo, kwargs, self._connect_defaults)
        return conninfo, connect_kwargs(self.pooler, self._driver.name, kwargs)

    # -- upkeep decisions (lock held, no I/O) --------------------------------

    def _decide_upkeep_locked(self, now: float, check_all: bool = False) -> Chores:
        """Reclaim dropped loans, find leaks, expire, recycle and shrink idle connections.

        Everything chosen is already off the books (retired, or counted
        pending for ``to_check``); the caller closes or checks it without the lock.
        """
        engine = self._engine
        counters = self._settings.counters
        chores = Chores()
        if engine.dropped:
            chores.reclaimed = engine.reclaim_dropped_locked()
            counters["connections_dropped"] += chores.reclaimed
        if self.leak_timeout is not None:
            for entry in engine.in_use.values():
                held = now - entry.borrowed_at
                if not entry.leak_reported and held > self.leak_timeout:
                    entry.leak_reported = True
                    chores.leaks.append((held, entry.stack))
            counters["leaks_detected"] += len(chores.leaks)
        old = [e for e in engine.idle if e.expires_at <= now]
        if old:
            kept = [e for e in engine.idle if e.expires_at > now]
            engine.idle.clear()
            engine.idle.extend(kept)
            engine.retire_locked(*old, reason="expired")
            chores.to_close.extend(old)
            counters["connections_recycled"] += len(old)
        if self.max_idle is not None:
            expired = engine.pop_expired_idle_locked(self.max_idle, self.min_size, now)
            counters["connections_idle_closed"] += len(expired)
            chores.to_close.extend(expired)
        if self._shrinking:  # resize() lowered max_size
            while engine.idle and engine.size - engine.closing > engine.max_size:
                surplus = engine.idle.pop(0)
                engine.retire_locked(surplus, reason="resized")
                chores.to_close.append(surplus)
            self._shrinking = engine.size > engine.max_size
        if check_all:
            chores.to_check = list(engine.idle)
            engine.idle.clear()
            engine.pending += len(chores.to_check)
        return chores

    def _make_room_to_wait_locked(self) -> None:
        """A borrower found nothing idle and will queue: free the slots of dropped loans,
        and refuse with TooManyRequests past ``max_waiting``. Lock held."""
        engine = self._engine
        if engine.dropped:
            engine.reclaim_dropped_locked()
        if self.max_waiting and len(engine.waiters) >= self.max_waiting:
            self._requests_errors += 1
            waiting = len(engine.waiters)
            raise self._err(
                TooManyRequests, f"pool {self.name!r} already has {waiting} requests waiting"
            )

    def _give_back_locked(self, entry: PooledConnection, now: float) -> bool:
        """Keep a clean connection: a waiter's, else idle. Lock held.

        False (the asyncio null pool, with no waiter): it was retired instead; close it.
        """
        self._engine.give_back_locked(entry, now)
        return True

    def _settle_checked_locked(
        self,
        entries: list[PooledConnection],
        good: list[PooledConnection],
        bad: list[PooledConnection],
    ) -> list[PooledConnection]:
        """Place connections checked without the lock (``entries``, counted pending). Lock held.

        ``good`` ones go back (to a waiter, else idle, in idle-age order); ``bad``
        ones, and good ones a closed pool can't keep, are retired in ``bad``.
        Returns the others retired meanwhile (drained during the checks): the
        caller closes them and ``bad``.
        """
        engine = self._engine
        engine.pending -= len(entries)
        engine.connections_lost += len(bad)
        if self._closed:
            bad.extend(good)
            good = []
        # drain() during the checks did not see these: close the ones it ended.
        ended = [e for e in good if e.epoch != engine.epoch]
        if ended:
            good = [e for e in good if e.epoch == engine.epoch]
            engine.retire_locked(*ended, reason="drained")
            self._settings.counters["connections_drained"] += len(ended)
        now = engine.clock()
        for entry in good:
            idle_since = entry.idle_since
            if not self._give_back_locked(entry, now):
                ended.append(entry)  # retired (null pool): closed by the caller, not lost
            entry.idle_since = idle_since  # a check is not a use: max_idle still counts
        if good:
            # Keep the stack ordered by idle age: expiry looks at its bottom only.
            ordered = sorted(engine.idle, key=lambda e: e.idle_since)
            engine.idle.clear()
            engine.idle.extend(ordered)
        engine.retire_locked(*bad, reason="dead")
        return ended

    def _drain_locked(self) -> list[PooledConnection]:
        """Retire every idle connection and mark every other one to be closed when back.

        Every connection that exists now belongs to an older epoch than the
        engine's: those lent, being cleaned or opened are closed when they
        reach the pool (lent ones also get an expiry in the past, which the
        return's fast path already tests). Returns the idle ones: close them.
        """
        engine = self._engine
        engine.epoch += 1
        for entry in engine.in_use.values():
            entry.expires_at = float("-inf")
        idle = list(engine.idle)
        engine.idle.clear()
        engine.retire_locked(*idle, reason="drained")
        self._settings.counters["connections_drained"] += len(idle)
        return idle

    def _resize_locked(self, min_size: Any, max_size: Any) -> None:
        min_size, max_size = _check_sizes(min_size, max_size)
        self._settings.min_size = min_size
        self._engine.max_size = max_size
        self._shrinking = self._engine.size > max_size


def positive(name: str, value: Any) -> float:
    """A duration > 0 seconds (not None)."""
    return as_timeout(name, value)
