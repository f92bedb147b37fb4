"""The modern pool: :class:`ConnectionPool`.

Built on the same engine as the psycopg2.pool drop-in. Borrowers wait in a
FIFO queue and a returned connection goes straight to the oldest waiter (no
barging). Connections are checked on the way out, cleaned on the way back,
and maintained by background threads (see ``_upkeep.py``). Settings,
statistics and the upkeep decisions live in :class:`~psycopool._base.BasePool`,
shared with the asyncio pool; this module does the blocking I/O.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

from psycopool._args import as_timeout
from psycopool._base import (
    CT,
    DEFAULT_NUM_WORKERS,
    CheckPolicy,
    ResetPolicy,
    positive,
)
from psycopool._borrowed import returning_class
from psycopool._drivers import IDLE, INTRANS
from psycopool._errors import PoolClosed, PoolError, PoolTimeout
from psycopool._maintenance import Maintenance
from psycopool._network import DEFAULT_NETWORK_TIMEOUT, interrupt
from psycopool._pooler import Pooler
from psycopool._upkeep import Upkeep

logger = logging.getLogger("psycopool")

#: Seconds close() gives its threads to end once told to, even past its deadline.
STOP_GRACE = 0.1
_Pool = TypeVar("_Pool", bound="ConnectionPool[Any]")


class ConnectionPool(Maintenance[CT]):
    """A pool of PostgreSQL connections that waits fairly, checks, cleans and maintains them.

    ``conninfo`` (a string, or a callable returning one at every connect) and
    ``kwargs`` (a dict, or a callable returning one) go to the driver's
    ``connect``. See ``docs/connection-pool.md`` for every parameter.
    """

    #: The monotonic clock for ages (max_idle, max_lifetime, leak_timeout). Override
    #: it on a subclass (``clock = staticmethod(fake)``) to test them without sleeping;
    #: waits and timeouts always use real time.
    clock = staticmethod(time.monotonic)

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
        close_returns: bool = False,
        open: bool | Literal["lazy"] = True,
    ) -> None:
        if open not in (True, False, "lazy"):
            raise ValueError(f"open must be True, False or 'lazy'; got {open!r}")
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
            driver=driver,
            connection_class=connection_class,
            name=name,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            num_workers=num_workers,
            pooler=pooler,
        )
        #: open="lazy": opened by the first borrow in each process, so a pool made before a
        #: fork (gunicorn --preload, Celery prefork, uWSGI) connects only where it is used.
        self._lazy = open == "lazy"
        self._open_lock = threading.Lock()
        self._reset_extra = self._reset_function(reset)
        if close_returns:
            self.close_returns = True
            driver_ = self._driver
            if not (driver_.name == "psycopg" and _psycopg_returns_on_close()):
                # psycopg >= 3.3's close() returns a connection whose _pool is set
                # itself; elsewhere a subclass of the connection class does.
                driver_.connection_class = returning_class(driver_.connection_class)
        self._init_lending()
        engine = self._engine
        engine.track_dropped = True
        engine.after_fork = self._after_fork
        self._upkeep = Upkeep(engine, self._settings, self._reconnect_failed)
        if open is True:
            self.open()

    def _reconnect_failed(self) -> None:
        if self.reconnect_failed_callback is not None:
            self.reconnect_failed_callback(self)

    def _reset_function(self, reset: ResetPolicy) -> Callable[[Any], object] | None:
        if reset == "discard":
            return self._discard_all
        if callable(reset):
            return reset
        return None

    def _discard_all(self, conn: Any) -> None:
        """``DISCARD ALL``, then ``configure`` again: a discarded session is a new session."""
        self._driver.execute_autocommit(conn, "DISCARD ALL")
        if self._configure is not None:
            self._configure(conn)

    def _connect(self) -> Any:
        """Open one connection (called by connector threads) and run ``configure`` on it."""
        conninfo, kwargs = self._connect_arguments()
        driver = self._driver
        conn = driver.connect(conninfo, kwargs)
        if driver.name == "psycopg" and not hasattr(conn, "_pool"):
            # psycopg's mark of a pooled connection: no ResourceWarning of its own
            # when an abandoned pool's connections are collected (the pool warns once).
            conn._pool = None
        if self._configure is not None:
            try:
                self._configure(conn)
                status = driver.transaction_status(conn)
                if status == INTRANS:
                    driver.commit(conn)  # keep what configure set in a transaction
                elif status != IDLE:
                    raise PoolError(f"configure left the connection in status {status}")
            except BaseException:
                driver.close(conn)
                raise
        return conn

    # -- life cycle ----------------------------------------------------------

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Start the background threads and open ``min_size`` connections.

        With ``wait=True``, block until they are open (see :meth:`wait`).
        Opening an open pool does nothing; a closed pool can't be reopened.
        """
        if self._closed:
            raise self._err(PoolClosed, f"pool {self.name!r} was closed and can't be reopened")
        if not self._opened:
            self._opened = True
            self._usable = True
            self._upkeep.start(self._upkeep_pass)
            self._upkeep.request_connections()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open; PoolTimeout after ``timeout`` seconds."""
        timeout = positive("timeout", timeout)
        deadline = time.monotonic() + timeout
        engine = self._engine
        while True:
            with engine.lock:
                ready = len(engine.idle) + len(engine.in_use) >= self.min_size
            if ready:
                return
            if not self._usable:  # closed, or never opened: nothing will come
                raise self._closed_error()
            if time.monotonic() >= deadline:
                raise self._err(
                    PoolTimeout,
                    f"pool {self.name!r}: {self.min_size} connections not open after"
                    f" {timeout:.2f} s{self._last_error_hint()}",
                )
            time.sleep(0.005)

    def close(self, timeout: float = 5.0) -> None:
        """Close the pool and every connection it has.

        Waiters get :class:`PoolClosed`. Lent connections are closed when they
        come back; those still out after ``timeout`` seconds are closed then,
        so no connection is left open on the server. Returns within about
        ``timeout`` seconds: a connector thread still connecting then is left
        to close what it opens.
        """
        timeout = as_timeout("timeout", timeout, allow_zero=True)
        deadline = time.monotonic() + timeout
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
            waiters = list(engine.waiters)
            engine.waiters.clear()
        for waiter in waiters:
            waiter.wake()
        engine.close(idle)
        while True:
            with engine.lock:
                if engine.dropped:  # lent, then garbage-collected: not coming back
                    engine.reclaim_dropped_locked()
                lent = len(engine.in_use)
            if not lent or time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        with engine.lock:
            leftovers = engine.close_all_locked()
        for entry in leftovers:
            # Its borrower may be stuck in a call on it (a dead network): shut its socket
            # down so that call fails now; psycopg2's close() would wait for it.
            stuck = entry.conn if entry.ref is None else entry.ref()
            if stuck is not None:
                if self.close_returns:
                    stuck._pool = None  # its close() must close it, not return it here
                interrupt(self._driver, stuck)
        if leftovers:
            logger.warning(
                "pool %r: closing %d connections still lent after %.2f s",
                self.name,
                len(leftovers),
                timeout,
            )
        engine.close(leftovers)
        # What is left of the deadline (a moment at least, to see the threads end).
        still_running = self._upkeep.stop(max(STOP_GRACE, deadline - time.monotonic()))
        if still_running:
            logger.warning(
                "pool %r: %d threads did not stop in time", self.name, len(still_running)
            )
        engine.watcher.close()

    def __enter__(self: _Pool) -> _Pool:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned pool: one warning naming it, then stop its threads (they
        # hold no reference to it) and close its idle connections.
        upkeep = getattr(self, "_upkeep", None)
        if upkeep is None or getattr(self, "_closed", True) or not getattr(self, "_opened", 0):
            return
        self._closed = True
        self._usable = False
        warnings.warn(
            f"psycopool: pool {self.name!r} was garbage-collected without being closed;"
            " use `with ConnectionPool(...) as pool:` or call pool.close()",
            ResourceWarning,
            stacklevel=2,
        )
        upkeep.stop(None)
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

    def _after_fork(self) -> None:
        """In a forked child: the engine dropped the parent's connections; restart upkeep.

        A lazy pool goes back to unopened: the child connects at its first borrow.
        """
        self._open_lock = threading.Lock()
        if self._lazy and not self._closed:
            self._opened = False
            self._usable = False
        self._upkeep.reset_after_fork(
            self._upkeep_pass if self._opened and not self._closed else None
        )

    def _open_lazily(self) -> None:
        with self._open_lock:
            if not self._opened and not self._closed:
                self.open()


def _psycopg_returns_on_close() -> bool:
    """psycopg >= 3.3: ``Connection.close()`` returns a connection to its ``_pool``."""
    import psycopg

    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    return (major, minor) >= (3, 3)
