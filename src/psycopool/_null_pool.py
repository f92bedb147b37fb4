""":class:`NullConnectionPool`: a pool that keeps no idle connection.

Each borrow gets a new connection (opened by a connector thread, so a burst
opens at most ``num_workers`` at a time) and each return closes it, unless
a borrower is waiting: then the connection, cleaned, goes straight to the
oldest one. ``max_size`` bounds how many exist; waits are the main pool's
(FIFO, bounded by ``timeout``). For applications that want the pool's
limits, waits and cleaning, but no connection kept between uses (behind an
external pooler, or for rare jobs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from psycopool._args import null_sizes
from psycopool._base import CT, DEFAULT_NUM_WORKERS, CheckPolicy, Chores, ResetPolicy, positive
from psycopool._network import DEFAULT_NETWORK_TIMEOUT
from psycopool._pool import ConnectionPool
from psycopool._pooler import Pooler
from psycopool._reports import NullReports


class NullConnectionPool(NullReports, ConnectionPool[CT]):
    """A :class:`ConnectionPool` with ``min_size=0`` that closes connections on return."""

    def __init__(
        self,
        conninfo: str | Callable[[], str] = "",
        *,
        kwargs: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        min_size: int = 0,
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
        open: bool = True,
    ) -> None:
        min_size, max_size = null_sizes(min_size, max_size)
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
            close_returns=close_returns,
            open=open,
        )

    def wait(self, timeout: float = 30.0) -> None:
        """Open one connection and close it: the server can be reached (else PoolTimeout)."""
        self.putconn(self.getconn(positive("timeout", timeout)))

    def resize(self, min_size: int, max_size: int | None = None) -> None:
        """Change ``max_size`` (``min_size`` stays 0)."""
        min_size, max_size = null_sizes(min_size, max_size)
        super().resize(min_size, max_size)

    def _decide_upkeep_locked(self, now: float, check_all: bool = False) -> Chores:
        # A connection opened for a borrower who gave up waiting is not kept.
        chores = super()._decide_upkeep_locked(now, False)
        engine = self._engine
        idle = list(engine.idle)
        engine.idle.clear()
        engine.retire_locked(*idle)
        chores.to_close.extend(idle)
        return chores
