"""Borrowing and returning: the hot path of :class:`~psycopool.ConnectionPool`.

``getconn`` takes the lock, pops the warmest idle connection, releases the
lock and checks it; a borrower that finds none queues (FIFO) and is handed
a connection by the next return or by a connector thread. ``putconn`` matches
the return to its loan (:func:`~psycopool._engine.stale_return`), then keeps
a clean connection under the same lock (or hands it to the oldest waiter),
else cleans it outside the lock. The configured ``check`` runs on every
connection handed out, whichever path it came by. Here are the usual borrow
and return; every other path is in ``_lending_slow.py``.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopool._args import MAX_SECONDS
from psycopool._base import CT, positive
from psycopool._borrowed import Borrowed
from psycopool._drivers import IDLE, get_driver
from psycopool._health import RECENTLY_USED
from psycopool._lending_slow import LendingSlowPaths

_get_ident = threading.get_ident


class LendingPool(LendingSlowPaths[CT]):
    """getconn / putconn / connection() of the threaded pool."""

    #: With ``close_returns=True``: ``conn.close()`` returns a lent connection.
    close_returns = False
    #: Precomputed by the constructor for the hot path (see _init_lending).
    _lend_extras = False
    _fast_lend = True
    _fast_return = True
    _keep_clean = True
    _psycopg2 = False
    #: The driver's is_clean, bound once (the psycopg 3 return calls it).
    _is_clean: Any

    def _init_lending(self) -> None:
        self._psycopg2 = self._driver.name == "psycopg2"
        self._is_clean = self._driver.is_clean
        self._lend_extras = self.leak_timeout is not None or self.close_returns
        # Lent by getconn's first section alone: the liveness check, nothing recorded.
        self._fast_lend = self._liveness_only and not self._lend_extras
        self._keep_clean = self._rollback_only and self._keeps_idle
        # close_returns: the slow path clears the pool mark on the connection.
        self._fast_return = self._keep_clean and not self.close_returns

    # -- borrowing -----------------------------------------------------------

    def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is not None and (type(timeout) is not float or not 0.0 < timeout <= MAX_SECONDS):
            timeout = positive("timeout", timeout)  # checked in full only if unusual
        me = _get_ident()
        engine = self._engine
        lock = engine.lock
        entry = None
        # Interrupt safety (KeyboardInterrupt, any asynchronous exception): the books
        # change with plain stores, no call in between; until the connection is
        # handed out (``entry.conn`` cleared), the handler gives it back. The lock is
        # taken without ``with``, by the rule stated at ``Engine.lock``.
        try:
            lock.acquire()
            if self._usable:
                self._requests_num += 1
                idle = engine.idle
                if idle:
                    taken = idle[-1]
                    ident = id(taken.conn)
                    taken.owner = me
                    engine.in_use[ident] = taken
                    entry = taken
                    # Off the idle stack last: an interrupt can land only after this
                    # call returns, when the handler finds ``entry`` in use and ours.
                    idle.pop()
            lock.release()
            if entry is not None:
                conn = entry.conn
                clock = engine.clock
                now = clock()
                # Both drivers' connections have `closed`: true once closed or broken.
                if (
                    self._fast_lend
                    and now < entry.expires_at
                    and now - entry.idle_since < RECENTLY_USED
                    and not conn.closed
                ):
                    # The hot path: _lend() inlined.
                    entry.conn = None
                    entry.borrowed_at = now
                    return conn  # type: ignore[no-any-return]
            return self._getconn_slow(timeout, me, entry)
        except BaseException:
            try:  # inline, not a function: an interrupt can land at a call's entry
                lock.release()
            except RuntimeError:
                pass  # not held by this thread: released already, or never taken
            self._unwind(entry, None, me)  # the slow path's own handler ran first
            raise

    def connection(self, timeout: float | None = None) -> Borrowed[CT]:
        """``with pool.connection() as conn:`` borrows; commits on success, rolls back on error.

        A connection closed inside the block ends it quietly: the pool discards
        it and opens a replacement.
        """

        return Borrowed(self, timeout)

    @staticmethod
    def check_connection(conn: Any) -> None:
        """A ``check`` that makes one round trip outside any transaction; raises if it fails.

        ``check=ConnectionPool.check_connection`` is psycopg_pool's spelling of
        ``check="ping"``; works with both drivers' connections.
        """
        get_driver(type(conn)).execute_autocommit(conn, "SELECT 1")

    # -- returning -----------------------------------------------------------

    def putconn(self, conn: CT) -> None:
        """Return a borrowed connection: cleaned and kept (or handed to a waiter), or closed.

        ``ValueError`` if the pool did not lend it, it was already returned,
        or the return is a stale one (see ``stale_return`` in ``_engine.py``).
        """
        me = _get_ident()
        engine = self._engine
        lock = engine.lock
        c: Any = conn
        # The usual return, decided under one lock with no I/O; anything else
        # (another thread's loan, a connection to clean or close, close_returns,
        # a closing or shrinking pool) takes the slow path, which decides again
        # from the start. Interrupt safety as in getconn.
        try:
            lock.acquire()
            ident = id(c)
            entry = engine.in_use.get(ident)
            if (
                entry is not None
                and entry.owner == me
                and self._fast_return
                and self._usable
                and not self._shrinking
            ):
                clock = engine.clock
                now = clock()
                if now < entry.expires_at and (
                    # Psycopg2Driver.is_clean() inlined (public attributes only).
                    c.get_transaction_status() == IDLE
                    and (c.autocommit, c.isolation_level, c.readonly, c.deferrable) == entry.state
                    if self._psycopg2
                    else self._is_clean(c, entry.state)
                ):
                    held = now - entry.borrowed_at
                    use_times = engine.use_times
                    if use_times is not None:  # an exporter is attached (see _timings.py)
                        use_times.append(held)
                    # Decided: now the books change with stores only.
                    entry.returner = me
                    self._usage += held
                    entry.conn = c
                    if engine.waiters:  # handed over from in_use: never off the books
                        engine.give_back_locked(entry, now)
                    else:  # Engine.give_back_locked(), its common branch inlined
                        entry.idle_since = now
                        del engine.in_use[ident]
                        engine.idle.append(entry)
                    lock.release()
                    return
            lock.release()
        except BaseException:
            try:  # inline, not a function: an interrupt can land at a call's entry
                lock.release()
            except RuntimeError:
                pass  # not held by this thread: released already, or never taken
            raise
        self._putconn_slow(c, me)

    def _leave_read_only_server(self, conn: Any) -> None:
        raise NotImplementedError  # ConnectionPool's
