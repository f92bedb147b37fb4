"""psycopool: a fast, fair, fault-tolerant PostgreSQL connection pool.

- :class:`ConnectionPool`: the modern pool (fair waits, health checks,
  lifetimes, session reset, background upkeep, statistics), for psycopg2
  and psycopg 3. :class:`NullConnectionPool`: the same, keeping no idle
  connection.
- :class:`AsyncConnectionPool`, :class:`AsyncNullConnectionPool`: the same
  pool for asyncio and psycopg 3's ``AsyncConnection`` (imported on first use).
- ``from psycopool import pool``: a drop-in replacement for ``psycopg2.pool``.
"""

from typing import TYPE_CHECKING, Any

from psycopool._errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from psycopool._loans import Loan
from psycopool._null_pool import NullConnectionPool
from psycopool._pool import ConnectionPool

if TYPE_CHECKING:
    from psycopool._null_pool_async import AsyncNullConnectionPool
    from psycopool._pool_async import AsyncConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "AsyncNullConnectionPool",
    "ConnectionPool",
    "Loan",
    "NullConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "__version__",
]

__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    """The async pools, imported on first use: ``import psycopool`` stays light."""
    if name == "AsyncConnectionPool":
        from psycopool._pool_async import AsyncConnectionPool

        return AsyncConnectionPool
    if name == "AsyncNullConnectionPool":
        from psycopool._null_pool_async import AsyncNullConnectionPool

        return AsyncNullConnectionPool
    raise AttributeError(f"module 'psycopool' has no attribute {name!r}")
