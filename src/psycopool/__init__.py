"""psycopool: a fast, fair, fault-tolerant PostgreSQL connection pool.

- :class:`ConnectionPool`: the modern pool (fair waits, health checks,
  lifetimes, session reset, background upkeep, statistics), for psycopg2
  and psycopg 3.
- ``from psycopool import pool``: a drop-in replacement for ``psycopg2.pool``.
"""

from psycopool._errors import PoolClosed, PoolError, PoolTimeout, TooManyRequests
from psycopool._loans import Loan
from psycopool._pool import ConnectionPool

__all__ = [
    "ConnectionPool",
    "Loan",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "TooManyRequests",
    "__version__",
]

__version__ = "0.1.0"
