"""Drop-in replacement for :mod:`psycopg2.pool`.

Migrating is one changed import line::

    from psycopool import pool   # was: from psycopg2 import pool

The classes keep psycopg2.pool's contract (keys, LIFO reuse, "connection pool
exhausted" raised at once instead of waiting) and add ``idle_timeout`` and
:meth:`~SimpleConnectionPool.prune`. They fix psycopg2's known bugs: dead
idle connections are replaced, the ``maxconn`` bound always holds, returned
connections are really clean, a second return or a wrong key is refused
before anything is touched, and a forked child leaves the parent's sessions
alone. See ``docs/migrating-from-psycopg2-pool.md`` for every difference.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import psycopg2

from psycopool._args import as_int_like, as_seconds, show
from psycopool._drivers import IDLE as _IDLE
from psycopool._drivers import masked_error
from psycopool._drivers._psycopg2 import Psycopg2Driver
from psycopool._dropin_lending import _CLEAN, _CLOSE, _KEEP, _NOTHING, DropinLending
from psycopool._dropin_upkeep import PoolError
from psycopool._engine import Engine
from psycopool._entries import PooledConnection, stale_return
from psycopool._health import RECENTLY_USED
from psycopool._loans import Loan
from psycopool._network import check_network_timeout, network_options, with_defaults

__all__ = [
    "AbstractConnectionPool",
    "PoolError",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
]

_get_ident = threading.get_ident

# Never appended to (expiry runs only with an idle_timeout): no list per call on the hot path.
_NO_EXPIRY: list[PooledConnection] = []
_driver = Psycopg2Driver()
_names = itertools.count(1)


class AbstractConnectionPool(DropinLending):
    """Key-based pooling shared by the Simple and Threaded pools.

    ``minconn`` connections are opened at once and kept; at most ``maxconn``
    exist at any time. ``*args`` and ``**kwargs`` go unchanged to every
    :func:`psycopg2.connect` call. ``idle_timeout`` governs returned
    connections: ``0`` keeps one only while fewer than ``minconn`` are idle
    (psycopg2's behaviour), ``None`` keeps them all, ``T > 0`` keeps them and
    closes those beyond ``minconn`` idle for more than ``T`` seconds.
    ``network_timeout`` (keyword-only, default None: off, as in psycopg2) adds
    TCP keepalives and ``tcp_user_timeout`` to the connections, where the
    arguments set none, so a dead network fails a query after that many seconds.
    """

    #: The monotonic clock used for idle ages. Override it on a subclass
    #: (``clock = staticmethod(fake)``) to test ``idle_timeout`` without sleeping.
    clock = staticmethod(time.monotonic)

    def __init__(
        self,
        minconn: Any,
        maxconn: Any,
        *args: Any,
        idle_timeout: float | None = 0,
        network_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.minconn = as_int_like("minconn", minconn)
        # No ceiling on maxconn: psycopg2 users write maxconn=sys.maxsize for "unbounded".
        self.maxconn = as_int_like("maxconn", maxconn, maximum=None)
        if self.minconn > self.maxconn:
            raise ValueError(
                "minconn must not exceed maxconn;"
                f" got minconn={show(minconn)}, maxconn={show(maxconn)}"
            )
        self.idle_timeout = as_seconds("idle_timeout", idle_timeout)
        #: Opt-in here (psycopg2's arguments reach connect() unchanged by default):
        #: keepalives and tcp_user_timeout bounding a dead network, see ConnectionPool.
        self.network_timeout = check_network_timeout(network_timeout)
        self._network_options = (
            network_options(self.network_timeout) if self.network_timeout is not None else None
        )
        self.closed = False
        #: The pool's name in log lines and metrics; set it to one of your own.
        self.name = f"{type(self).__name__}-{next(_names)}"
        self._args = args
        self._kwargs = kwargs
        self._keys = 0
        #: key -> connection checked out under it (psycopg2 has the same name).
        self._used: dict[Any, Any] = {}
        self._engine = Engine(
            _driver,
            self._connect_new,
            max_size=self.maxconn,
            clock=self.clock,
        )
        self._engine.after_fork = self._used.clear
        self._engine.name = self.name
        try:
            self._refill(raise_errors=True)
        except BaseException:
            with self._engine.lock:
                entries = self._engine.close_all_locked()
                self.closed = True
            self._engine.close(entries)
            raise

    def __repr__(self) -> str:
        engine = self._engine
        state = "closed" if self.closed else "open"
        return (
            f"<{type(self).__name__} {state} minconn={self.minconn} maxconn={self.maxconn}"
            f" idle={len(engine.idle)} used={len(engine.in_use)} at {id(self):#x}>"
        )

    def _connect_new(self) -> Any:
        args, kwargs = self._args, self._kwargs
        if self._network_options is not None:
            dsn = args[0] if args else kwargs.get("dsn")
            kwargs = with_defaults(_driver, dsn or "", kwargs, self._network_options)
        try:
            return psycopg2.connect(*args, **kwargs)
        except psycopg2.Error as exc:
            masked = masked_error(exc, args[0] if args else kwargs.get("dsn"), kwargs)
            if masked is exc:
                raise
        raise masked from None  # outside the handler: the original isn't chained

    # -- getconn -------------------------------------------------------------

    # Interrupt safety: a KeyboardInterrupt (or any asynchronous exception) is
    # raised at the next call or loop boundary of Python code. So each change
    # of the books below is made of plain stores with no call in between (a
    # call that mutates, like append, comes last), every slot reserved for I/O
    # (pending: connecting or cleaning; closing) is released in a handler, and
    # the lock is taken with ``with``, or, on the hot paths, by the rule stated
    # at ``Engine.lock`` (an RLock acquired inside the ``try``, released inline
    # by the handler). The slow paths in _dropin_lending.py and _dropin_upkeep.py
    # follow the same rule.

    def _getconn(self, key: Any = None) -> Any:
        me = _get_ident()
        engine = self._engine
        lock = engine.lock
        used = self._used
        while True:
            expired: list[PooledConnection] = [] if self.idle_timeout else _NO_EXPIRY
            entry: PooledConnection | None = None
            try:
                lock.acquire()
                if self.closed:
                    raise PoolError("connection pool is closed")
                if key is None:
                    self._keys += 1
                    key = self._keys
                    if key in used:
                        key = self._getkey()
                elif key in used:
                    conn = used[key]
                    lock.release()
                    return conn
                idle = engine.idle
                if self.idle_timeout and idle:
                    engine.pop_expired_idle_locked(
                        self.idle_timeout, self.minconn, engine.clock(), expired
                    )
                if idle:
                    # Hot path: the warmest idle connection, counted in use (under
                    # ``key``, which finds it again whatever interrupts the caller).
                    entry = idle[-1]
                    conn = entry.conn
                    ident = id(conn)
                    engine.in_use[ident] = entry
                    entry.key = key
                    entry.owner = me
                    used[key] = conn
                    idle.pop()  # last: an interrupt can land only after it returns
                elif engine.size >= self.maxconn:
                    engine.timeouts += 1
                    raise PoolError("connection pool exhausted")
                else:
                    engine.pending += 1
                lock.release()
            except BaseException:
                try:  # inline, not a function: an interrupt can land at a call's entry
                    lock.release()
                except RuntimeError:
                    pass  # not held by this thread: released already, or never taken
                raise
            finally:
                if expired:
                    engine.close(expired, "idle")
            if entry is None:
                return self._lend_new(key)
            # Engine.is_alive(), with its recently-used shortcut inlined.
            clock = engine.clock
            now = clock()
            if (now - entry.idle_since < RECENTLY_USED and not conn.closed) or engine.is_alive(
                entry
            ):
                entry.borrowed_at = now
                return conn
            self._drop_dead(entry)

    # -- putconn -------------------------------------------------------------

    def _putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
        me = _get_ident()
        engine = self._engine
        driver = engine.driver
        lock = engine.lock
        expired: list[PooledConnection] = [] if self.idle_timeout else _NO_EXPIRY
        entry: PooledConnection | None = None
        # What this return does with the connection; set with the books' change.
        action = _NOTHING
        try:
            try:
                lock.acquire()
                if self.closed:
                    raise PoolError("connection pool is closed")
                ident = id(conn)
                entry = engine.in_use.get(ident)
                if entry is None:
                    raise PoolError("trying to put unkeyed connection")
                if key is not None:
                    # A key matches the return to its loan exactly.
                    if key != entry.key or self._used.get(key) is not conn:
                        raise PoolError(
                            f"trying to put a connection under key {key!r}, which is not the"
                            " key it has"
                        )
                elif entry.owner != me and stale_return(entry, me):
                    # Returned already by this thread, and lent again since: a stale return.
                    raise PoolError("trying to put unkeyed connection")
                entry.returner = me
                clock = engine.clock
                now = clock()
                if engine.use_times is not None:
                    engine.use_times.append(now - entry.borrowed_at)
                # Decide first (every call is here), then change the books with stores only.
                if close:
                    decided = _CLOSE
                elif (
                    # Psycopg2Driver.is_clean(), inlined: this front door is psycopg2's alone.
                    not conn.closed
                    and conn.get_transaction_status() == _IDLE
                    and (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)
                    == entry.state
                ):
                    # The usual case, decided under one lock with no I/O.
                    keep = self.idle_timeout != 0 or len(engine.idle) < self.minconn
                    decided = _KEEP if keep else _CLOSE
                elif driver.is_closed(conn):
                    decided = _CLOSE
                else:
                    decided = _CLEAN
                del engine.in_use[ident]
                del self._used[entry.key]
                if decided == _KEEP:
                    entry.idle_since = now
                    engine.idle.append(entry)
                    if self.idle_timeout:
                        # Kept; expiry only closes connections above minconn.
                        engine.pop_expired_idle_locked(
                            self.idle_timeout, self.minconn, now, expired
                        )
                    lock.release()
                    return
                if decided == _CLOSE:
                    engine.closing += 1
                else:
                    engine.pending += 1
                action = decided
                lock.release()
            except BaseException:
                try:  # inline, not a function: an interrupt can land at a call's entry
                    lock.release()
                except RuntimeError:
                    pass  # not held by this thread: released already, or never taken
                raise
            if action == _CLEAN:
                token = [_CLEAN]
                action = _NOTHING
                try:
                    if self._clean_and_keep(entry, token):
                        return
                finally:
                    action = token[0]  # still _CLEAN only if interrupted before it took over
            else:
                action = _NOTHING
                engine.close_one(
                    entry,
                    "closed by the borrower"
                    if close
                    else ("broken" if driver.is_closed(conn) else "more than minconn idle"),
                )
        finally:
            if expired:
                engine.close(expired, "idle")
            if action != _NOTHING and entry is not None:
                # Interrupted between the books' change and the clean-up: close it.
                self._abandon(entry, action)
        if engine.size < self.minconn:
            self._refill()


class SimpleConnectionPool(AbstractConnectionPool):
    """The pool psycopg2 documents for single-threaded applications.

    Here it shares :class:`ThreadedConnectionPool`'s engine and is just as
    safe across threads: an uncontended lock costs less than the Python
    code that would avoid it.
    """

    def getconn(self, key: Any = None) -> Any:
        """Get a free connection, under ``key`` if given (the same key returns the same connection).

        Raises :class:`PoolError` "connection pool exhausted" at once when
        ``maxconn`` connections are checked out.
        """
        return self._getconn(key)

    def putconn(self, conn: Any = None, key: Any = None, close: bool = False) -> None:
        """Return a connection: cleaned, then kept or closed. ``close=True`` closes it."""
        self._putconn(conn, key, close)

    def closeall(self) -> None:
        """Close every connection, including those checked out; the pool can't be used again."""
        self._closeall()

    def prune(self) -> None:
        """Close dead idle connections and those past ``idle_timeout``, then refill to ``minconn``.

        Call it periodically to clean up the pool; ``getconn`` and ``putconn``
        also do the idle-timeout part lazily.
        """
        self._prune()

    def stats(self) -> dict[str, int]:
        """Gauges and counters, named as :meth:`psycopool.ConnectionPool.stats` where they mean
        the same (this pool never waits: no ``requests_waiting``/``requests_wait_ms``)."""
        return self._stats()

    def lent(self) -> list[Loan]:
        """The connections checked out now, longest held first: how long, and under which key."""
        return self._engine.lent()


class ThreadedConnectionPool(SimpleConnectionPool):
    """A connection pool that can be shared across threads.

    Connecting, cleaning and closing happen outside the lock, so a slow
    server never serialises every thread; the ``maxconn`` bound still holds.
    """
