"""psycopool: a fast, fair, fault-tolerant PostgreSQL connection pool.

- ``from psycopool import pool``: a drop-in replacement for ``psycopg2.pool``.
"""

from psycopool._errors import PoolError

__all__ = ["PoolError", "__version__"]

__version__ = "0.1.0"
