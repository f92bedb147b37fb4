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
import time
from collections.abc import Callable, Mapping
from threading import get_ident
from types import TracebackType
from typing import Any

from psycopool._args import MAX_SECONDS, as_timeout
from psycopool._base import (
    CT,
    DEFAULT_NUM_WORKERS,
    BasePool,
    CheckPolicy,
    ResetPolicy,
    positive,
)
from psycopool._drivers import IDLE, INTRANS, hide_password
from psycopool._engine import PooledConnection, Waiter
from psycopool._errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from psycopool._health import RECENTLY_USED, is_alive, ping
from psycopool._loans import Stack
from psycopool._network import DEFAULT_NETWORK_TIMEOUT, interrupt
from psycopool._pooler import Pooler
from psycopool._readonly import server_turned_read_only
from psycopool._reset import clean
from psycopool._upkeep import Upkeep

logger = logging.getLogger("psycopool")


class ConnectionPool(BasePool[CT]):
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
        open: bool = True,
    ) -> None:
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
        self._reset_extra = self._reset_function(reset)
        engine = self._engine
        engine.track_dropped = True
        engine.after_fork = self._after_fork
        self._upkeep = Upkeep(engine, self._settings, self._reconnect_failed)
        if open:
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
        so no connection is left open on the server.
        """
        timeout = as_timeout("timeout", timeout, allow_zero=True)
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
        deadline = time.monotonic() + timeout
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
                interrupt(self._driver, stuck)
        if leftovers:
            logger.warning(
                "pool %r: closing %d connections still lent after %.2f s",
                self.name,
                len(leftovers),
                timeout,
            )
        engine.close(leftovers)
        still_running = self._upkeep.stop(timeout)
        if still_running:
            logger.warning(
                "pool %r: %d threads did not stop in time", self.name, len(still_running)
            )
        engine.watcher.close()

    def __enter__(self) -> ConnectionPool[CT]:
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
        # An abandoned pool: stop its threads (they hold no reference to it).
        upkeep = getattr(self, "_upkeep", None)
        if upkeep is not None and not getattr(self, "_closed", True):
            upkeep.stop(None)

    def _after_fork(self) -> None:
        """In a forked child: the engine dropped the parent's connections; restart upkeep."""
        self._upkeep.reset_after_fork(
            self._upkeep_pass if self._opened and not self._closed else None
        )

    # -- borrowing -----------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> Any:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is None:
            timeout = self.timeout
        elif type(timeout) is not float or not 0.0 < timeout <= MAX_SECONDS:  # else checked in full
            timeout = positive("timeout", timeout)
        engine = self._engine
        lock = engine.lock
        deadline = 0.0
        counted = False
        while True:
            waiter: Waiter | None = None
            lock.acquire()
            try:
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
                    waiter = Waiter()
                    engine.waiters.append(waiter)
                    self._requests_queued += 1
            finally:
                lock.release()
            if waiter is not None:
                if not deadline:
                    deadline = time.monotonic() + timeout
                entry = self._wait(waiter, deadline, timeout)
                # Handed over by a borrower that returned it clean, or newly opened. Its
                # socket is still looked at: the server may have ended it while it was
                # lent, unnoticed by a borrower who ran nothing after. Waiting already
                # cost far more than this one system call.
                conn = entry.conn
                if is_alive(self._driver, conn, entry.fd, self._engine.watcher):
                    return self._lend(entry)
                self._drop(entry, conn, lost=True, reason="dead")
                continue
            conn = entry.conn
            now = self.clock()
            if now < entry.expires_at:
                # Both drivers' connections have `closed`: true once closed or broken.
                if (
                    self._liveness_only
                    and now - entry.idle_since < RECENTLY_USED
                    and not conn.closed
                ):
                    # The hot path: _lend() inlined.
                    entry.conn = None
                    entry.borrowed_at = now
                    if self.leak_timeout is not None:
                        entry.stack = Stack(1)
                        entry.borrower = get_ident()
                        entry.leak_reported = False
                    return conn
                if not deadline:
                    deadline = time.monotonic() + timeout
                try:
                    passed = self._passes_check(entry, deadline)
                except BaseException:
                    self.putconn(conn)  # interrupted: the connection goes back
                    raise
                if passed:
                    return self._lend(entry)
            self._drop(entry, conn, lost=now < entry.expires_at)
            if not deadline:
                deadline = time.monotonic() + timeout

    def _lend(self, entry: PooledConnection) -> Any:
        """Hand the connection out: from now on only the borrower keeps it alive."""
        conn = entry.conn
        entry.conn = None
        entry.borrowed_at = self.clock()
        if self.leak_timeout is not None:
            entry.stack = Stack(2)
            entry.borrower = get_ident()
            entry.leak_reported = False
        return conn

    def _passes_check(self, entry: PooledConnection, deadline: float) -> bool:
        """Run the configured check on a connection taken from the idle stack.

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

    def _drop(
        self, entry: PooledConnection, conn: Any, *, lost: bool, reason: str | None = None
    ) -> None:
        """Discard a connection that failed its check or outlived max_lifetime; ask for another."""
        engine = self._engine
        if reason is None:
            # A check of the socket or a ping that fails means the session ended.
            reason = (
                ("failed check" if callable(self.check_policy) else "dead") if lost else "expired"
            )
        with engine.lock:
            engine.in_use.pop(id(conn), None)
            engine.retire_locked(entry, reason=reason)
            if lost:
                engine.connections_lost += 1
            else:
                self._settings.counters["connections_recycled"] += 1
        engine.close_one(entry)
        self._upkeep.request_connections()

    def _wait(self, waiter: Waiter, deadline: float, timeout: float) -> PooledConnection:
        """Wait in the FIFO queue until handed a connection, or until the deadline."""
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
        if entry is not None:
            self._log_slow_wait(waited)
            return entry
        if self._closed:
            raise self._closed_error()
        raise self._timeout_error(timeout)

    def connection(self, timeout: float | None = None) -> _Borrowed:
        """``with pool.connection() as conn:`` borrows; commits on success, rolls back on error."""
        return _Borrowed(self, timeout)

    # -- returning -----------------------------------------------------------

    def putconn(self, conn: Any) -> None:
        """Return a borrowed connection: cleaned and kept (or handed to a waiter), or closed."""
        engine = self._engine
        driver = self._driver
        lock = engine.lock
        lock.acquire()
        try:
            entry = engine.in_use.pop(id(conn), None)
            if entry is None:
                if self._closed:
                    # Lent before close(timeout) gave up waiting for it: close() has
                    # closed it already; returning it is still fine.
                    driver.close(conn)
                    return
                raise self._not_lent_error(conn)
            entry.conn = conn
            now = engine.clock()
            held = now - entry.borrowed_at
            self._usage += held
            use_times = engine.use_times
            if use_times is not None:  # an exporter is attached (see _timings.py)
                use_times.append(held)
            if (
                self._rollback_only
                and self._usable
                and not self._shrinking
                and now < entry.expires_at
                and driver.is_clean(conn, entry.state)
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

    # -- maintenance ---------------------------------------------------------

    def _upkeep_pass(self, check_all: bool = False) -> None:
        """One round of upkeep: reclaim dropped, report leaks, expire, (check), refill."""
        engine = self._engine
        with engine.lock:
            if self._closed:
                return
            chores = self._decide_upkeep_locked(self.clock(), check_all)
        self._report(chores)
        engine.close(chores.to_close)
        if chores.to_check:
            self._check_idle(chores.to_check)
        self._upkeep.request_connections()

    def _check_idle(self, entries: list[PooledConnection]) -> None:
        """Check connections taken off the idle stack (counted pending); keep the good ones."""
        engine = self._engine
        driver = self._driver
        # Every ping ends by the pool's timeout: check() is bounded even on a dead network.
        deadline = time.monotonic() + self.timeout
        good = [
            e for e in entries if self._engine.is_alive(e) and ping(driver, e.conn, e.fd, deadline)
        ]
        bad = [e for e in entries if e not in good]
        with engine.lock:
            engine.pending -= len(entries)
            engine.connections_lost += len(bad)
            if self._closed:
                bad.extend(good)
                good = []
            now = engine.clock()
            for entry in good:
                idle_since = entry.idle_since
                engine.give_back_locked(entry, now)
                entry.idle_since = idle_since  # a check is not a use: max_idle still counts
            if good:
                # Keep the stack ordered by idle age: expiry looks at its bottom only.
                ordered = sorted(engine.idle, key=lambda e: e.idle_since)
                engine.idle.clear()
                engine.idle.extend(ordered)
            engine.retire_locked(*bad, reason="dead")
        engine.close(bad)

    def check(self) -> None:
        """Check every idle connection now (liveness and a round trip); replace the dead ones.

        Also applies max_idle, max_lifetime and leak reporting at once, and
        refills ``min_size``: what the upkeep thread does periodically.
        """
        if self._closed or not self._opened:
            raise self._closed_error()
        self._upkeep_pass(check_all=True)

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change the sizes. Growth starts at once; excess idle connections are closed now,
        excess lent ones when they come back."""
        with self._engine.lock:
            self._resize_locked(min_size, max_size)
        if self._opened and not self._closed:
            self._upkeep_pass()

    def drain(self) -> None:
        """Replace every connection: idle ones now, lent ones when they come back.

        For a credential rotation, a DNS change or a primary switch: after
        ``drain()`` no connection opened before it is lent again (a waiter
        already handed one keeps it until it returns it), and ``min_size`` is
        refilled with new connections at once.
        """
        engine = self._engine
        with engine.lock:
            if self._closed:
                raise self._closed_error()
            idle = self._drain_locked()
        engine.close(idle)
        if self._opened:
            self._upkeep.request_connections()

    def _leave_read_only_server(self, conn: Any) -> None:
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
        self.drain()


class _Borrowed:
    """The context manager returned by :meth:`ConnectionPool.connection`."""

    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: ConnectionPool[Any], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> Any:
        self._conn = conn = self._pool.getconn(self._timeout)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        driver = pool._driver
        try:
            if exc_type is None:
                if pool._closed and driver.is_closed(conn):
                    raise pool._err(
                        PoolClosed,
                        f"pool {pool.name!r} was closed, and this connection with it, before"
                        " the block ended: its transaction was not committed",
                    )
                driver.commit(conn)
            elif not driver.is_closed(conn):
                try:
                    driver.rollback(conn)
                except Exception:
                    pass  # the connection is broken: putconn discards it
                else:
                    if server_turned_read_only(driver, conn, exc):
                        pool._leave_read_only_server(conn)
        finally:
            pool.putconn(conn)
