"""The psycopg2 connection class whose ``close()`` gives a connection lent to SQLAlchemy back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2.extensions


class ReturningConnection(psycopg2.extensions.connection):
    """A psycopg2 connection that SQLAlchemy's ``close()`` gives back to the pool that lent it.

    psycopg2's ``close()`` is a C method no pool can redirect on a plain connection, so
    pools lending psycopg2 connections to SQLAlchemy create them with this class:
    ``ConnectionPool(dsn, driver=ReturningConnection)`` or, for the ``psycopool.pool``
    drop-in, ``ThreadedConnectionPool(1, 10, dsn, connection_factory=ReturningConnection)``.
    Outside SQLAlchemy it is an ordinary connection: ``close()`` closes it.
    """

    #: Set while lent through psycopool.sqlalchemy: called instead of closing, once.
    _psycopool_give_back: Callable[[Any], None] | None = None

    def close(self) -> None:
        give_back = self._psycopool_give_back
        if give_back is None:
            super().close()
            return
        self._psycopool_give_back = None
        give_back(self)
