"""Borrowing and returning: the hot path of :class:`~psycopool.AsyncConnectionPool`.

``getconn`` pops the warmest idle connection and lends it without an ``await``
that suspends; a borrower that finds none queues (FIFO) as a future, handed a
connection by the next return or by a connector task. ``putconn`` keeps a clean
connection (or hands it to the oldest waiter), else cleans it outside the lock.
Their usual paths take no lock: the books are the loop thread's (see
``Engine.lock``); the rest takes it, for readers on other threads. Every
interruption (a cancel, a timeout) on these paths gives the connection back or
closes it, then re-raises: see the cancellation notes in ``_pool_async.py``.
Here are the usual borrow and return; every other path is in
``_lending_slow_async.py``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Generic

from psycopool._args import MAX_SECONDS
from psycopool._base import CT, positive
from psycopool._drivers import IDLE
from psycopool._errors import PoolClosed
from psycopool._health import RECENTLY_USED
from psycopool._lending_slow_async import AsyncLendingSlowPaths
from psycopool._lending_slow_async import maybe_await as maybe_await  # _pool_async's import
from psycopool._readonly import aserver_turned_read_only


class AsyncLendingPool(AsyncLendingSlowPaths[CT]):
    """getconn / putconn / connection() of the asyncio pool."""

    _fast_lend = True
    #: With ``close_returns=True``: ``await conn.close()`` returns a lent connection.
    close_returns = False

    #: The driver's ``is_clean``, bound once by the pool: the return's hot path calls it.
    _is_clean: Any

    async def _leave_read_only_server(self, conn: Any) -> None:
        raise NotImplementedError

    # -- borrowing -----------------------------------------------------------

    async def getconn(self, timeout: float | None = None) -> CT:
        """Borrow a connection, waiting up to ``timeout`` seconds (default: the pool's).

        Raises :class:`PoolTimeout`, :class:`TooManyRequests` or :class:`PoolClosed`.
        Return it with :meth:`putconn`, or use :meth:`connection` instead.
        """
        if timeout is not None and (type(timeout) is not float or not 0.0 < timeout <= MAX_SECONDS):
            timeout = positive("timeout", timeout)  # checked in full only if unusual
        engine = self._engine
        entry = None
        # No lock: only the loop's thread writes the books (see Engine.lock), and
        # the entry is recorded in use before it leaves the idle stack.
        if self._usable:
            idle = engine.idle
            if idle:
                self._requests_num += 1  # else counted by _getconn
                taken = idle[-1]
                engine.in_use[id(taken.conn)] = taken
                entry = taken
                idle.pop()  # last: an interrupt can land only after it returns
        if entry is not None:
            clock = engine.clock
            now = clock()
            if (
                self._fast_lend
                and now - entry.idle_since < RECENTLY_USED
                and now < entry.expires_at
            ):
                # The hot path, with no await that suspends: _lend() inlined. Returned
                # clean (so open) less than RECENTLY_USED ago, and untouched since.
                conn = entry.conn
                entry.conn = None
                entry.borrowed_at = now
                return conn  # type: ignore[no-any-return]
        return await self._getconn(self.timeout if timeout is None else timeout, entry)

    def connection(self, timeout: float | None = None) -> _AsyncBorrowed[CT]:
        """``async with pool.connection() as conn:`` borrows; commits on success, else rolls back.

        A cancellation inside the block rolls back too, and is re-raised.
        """
        return _AsyncBorrowed(self, timeout)

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

    # -- returning -----------------------------------------------------------

    async def putconn(self, conn: Any) -> None:
        """Return a borrowed connection: cleaned and kept (or handed to a waiter), or closed."""
        engine = self._engine
        # The usual return, decided with no I/O and no await, and no lock (see
        # getconn); anything else takes _putconn_slow, which decides again.
        ident = id(conn)
        entry = engine.in_use.get(ident)
        if entry is not None and self._rollback_only and self._usable and not self._shrinking:
            now = engine.clock()
            # (No epoch test: drain() gives lent connections an expiry in the past.)
            try:
                # PsycopgInspector.is_clean() inlined: the fields behind psycopg's
                # public properties (a future psycopg without them: the driver's).
                clean = (
                    conn.pgconn.transaction_status == IDLE
                    and (
                        conn._autocommit,
                        conn._isolation_level,
                        conn._read_only,
                        conn._deferrable,
                    )
                    == entry.state
                )
            except AttributeError:
                clean = self._is_clean(conn, entry.state)
            if clean and now < entry.expires_at:
                held = now - entry.borrowed_at
                use_times = engine.use_times
                if use_times is not None:  # an exporter is attached (see _timings.py)
                    use_times.append(held)
                # Decided: the books change with stores, the call last.
                self._usage += held
                entry.conn = conn
                if engine.waiters:  # handed over from in_use: never off the books
                    engine.give_back_locked(entry, now)
                else:  # Engine.give_back_locked(), its common branch inlined
                    entry.idle_since = now
                    del engine.in_use[ident]
                    engine.idle.append(entry)
                return
        await self._putconn_slow(conn)


class _AsyncBorrowed(Generic[CT]):
    """The async context manager returned by :meth:`AsyncConnectionPool.connection`."""

    __slots__ = ("_conn", "_loan", "_pool", "_timeout")

    def __init__(self, pool: AsyncLendingPool[CT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    async def __aenter__(self) -> CT:
        pool = self._pool
        self._conn = conn = await pool.getconn(self._timeout)
        if pool.close_returns:
            self._loan = _loan_of(pool, conn)
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
        if pool.close_returns and _loan_of(pool, conn) != self._loan and not pool._closed:
            # `await conn.close()` in the block gave it back already (it may be lent
            # again since): nothing left to end or return.
            return
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


def _loan_of(pool: AsyncLendingPool[Any], conn: Any) -> float | None:
    """What tells this loan of ``conn`` from a later one (when lent); None: not lent."""
    engine = pool._engine
    with engine.lock:
        entry = engine.in_use.get(id(conn))
        return None if entry is None else entry.borrowed_at
