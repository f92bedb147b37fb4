"""The async pool that keeps no idle connection: :class:`AsyncNullConnectionPool`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from psycopool._args import null_sizes
from psycopool._base import CT, positive
from psycopool._drivers import hide_password
from psycopool._entries import PooledConnection
from psycopool._errors import PoolError, PoolTimeout
from psycopool._pool_async import AsyncConnectionPool
from psycopool._reports import NullReports


class AsyncNullConnectionPool(NullReports, AsyncConnectionPool[CT]):
    """Each borrow gets a new connection, each return closes it, unless a task is waiting.

    ``max_size`` still bounds how many exist at once (``None``: no bound), and
    borrowers beyond it wait in the same fair queue, with the same timeout,
    for a returned connection (handed over, not closed) or a new one. For
    servers behind an external pooler (PgBouncer) or with few, rare clients.
    """

    def __init__(
        self, conninfo: Any = "", *, min_size: int = 0, max_size: int | None = None, **kwargs: Any
    ) -> None:
        min_size, max_size = null_sizes(min_size, max_size)
        kwargs.pop("close_returns", None)  # closing is what a return does here anyway
        super().__init__(conninfo, min_size=0, max_size=max_size, **kwargs)
        self._rollback_only = False  # every return takes the path that may close

    async def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``max_size`` (``None`` or 0: no bound); ``min_size`` must stay 0."""
        min_size, max_size = null_sizes(min_size, max_size)
        await super().resize(min_size, max_size)

    def _give_back_locked(self, entry: PooledConnection, now: float) -> bool:
        """To the oldest waiter; with none, retired (the caller closes it). Lock held."""
        engine = self._engine
        if engine.waiters and engine.hand_locked(entry, now):
            return True
        engine.retire_locked(entry)
        engine.in_use.pop(id(entry.conn), None)  # left there by hand_locked, or a return's
        return False

    async def getconn(self, timeout: float | None = None) -> CT:
        """Connect for this borrower if there is room and no one waits; else queue as usual.

        Connecting is bounded by ``timeout`` too (then :class:`PoolTimeout`). A
        borrower that queues waits for a returned connection or a new one.
        """
        timeout = self.timeout if timeout is None else positive("timeout", timeout)
        engine = self._engine
        with engine.lock:
            room = self._usable and not engine.waiters and engine.size < engine.max_size
            if room:
                self._requests_num += 1
                engine.pending += 1
                epoch = engine.epoch
        if not room:
            return await super().getconn(timeout)
        entry = await self._open_reserved(timeout, epoch)
        with engine.lock:
            engine.pending -= 1
            if self._closed:
                engine.retire_locked(entry)
            else:
                engine.lend_new_locked(entry)
        if self._closed:
            engine.close_one(entry)
            raise self._closed_error()
        if self._liveness_only or await self._checked(entry, time.monotonic() + timeout):
            return self._lend(entry)
        self._drop(entry, entry.conn, "lost")
        return await super().getconn(timeout)

    async def _open_reserved(self, timeout: float, epoch: int) -> PooledConnection:
        """Open a connection for a slot already counted pending, within ``timeout`` seconds.

        The attempt runs as a task that is never cancelled: a borrower that times
        out or is cancelled stops *waiting* for it, and the attempt, once over,
        closes what it opened and gives the slot back. (Cancelled between the
        driver's connect and its return, it would drop an open connection.)
        """
        engine = self._engine
        start = engine.clock()
        attempt = asyncio.ensure_future(self._open_one())
        try:
            done, _ = await asyncio.wait({attempt}, timeout=timeout)
        except BaseException:
            attempt.add_done_callback(self._abandoned_attempt)
            raise
        if not done:
            attempt.add_done_callback(self._abandoned_attempt)
            with engine.lock:
                self._requests_errors += 1
            raise self._err(
                PoolTimeout,
                f"couldn't connect for pool {self.name!r} within {timeout:.2f} s"
                f"{self._last_error_hint()}",
            )
        try:
            conn = attempt.result()
        except Exception as exc:
            engine.connect_failed()
            engine.last_connect_error = hide_password(str(exc).strip()) or type(exc).__name__
            raise
        entry = engine.register(conn, start, epoch)
        self._upkeep._set_lifetime(entry)  # as for connections the upkeep opens
        return entry

    async def wait(self, timeout: float = 30.0) -> None:
        """Open one connection and close it: the server is reachable (psycopg_pool's meaning)."""
        timeout = positive("timeout", timeout)
        if not self._usable:
            raise self._closed_error()
        engine = self._engine
        with engine.lock:
            engine.pending += 1
            epoch = engine.epoch
        try:
            entry = await self._open_reserved(timeout, epoch)
        except PoolError:
            raise
        except Exception as exc:  # the driver's or configure's error: named, as PoolTimeout
            reason = hide_password(str(exc).strip()) or type(exc).__name__
            raise self._err(
                PoolTimeout, f"pool {self.name!r}: no connection could be opened: {reason}"
            ) from exc
        with engine.lock:
            engine.pending -= 1
            engine.retire_locked(entry)
        engine.close_one(entry)

    def _abandoned_attempt(self, attempt: asyncio.Future[Any]) -> None:
        """A connection attempt whose borrower stopped waiting ended: close it, free its slot."""
        engine = self._engine
        if attempt.cancelled() or attempt.exception() is not None:
            engine.connect_failed()
        else:
            self._driver.close(attempt.result())
            with engine.lock:
                engine.pending -= 1
        if not self._closed:
            self._upkeep.request_connections()  # a borrower may wait for that slot
