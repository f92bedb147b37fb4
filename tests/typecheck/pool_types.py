"""Checked by mypy (tests/test_typing.py), not run: pools are generic in their connection class."""

from __future__ import annotations

from typing import Any

import psycopg
from typing_extensions import assert_type

from psycopool import ConnectionPool, NullConnectionPool


class MyConn(psycopg.Connection[tuple[Any, ...]]):
    pass


def typed(dsn: str) -> None:
    pool = ConnectionPool(dsn, connection_class=MyConn)
    assert_type(pool, ConnectionPool[MyConn])
    conn = pool.getconn()
    assert_type(conn, MyConn)
    pool.putconn(conn)
    with pool.connection() as conn2:
        assert_type(conn2, MyConn)
    with ConnectionPool(dsn, connection_class=MyConn) as entered:
        assert_type(entered, ConnectionPool[MyConn])
    null = NullConnectionPool(dsn, connection_class=MyConn)
    assert_type(null.getconn(), MyConn)
    annotated: ConnectionPool[MyConn] = ConnectionPool(dsn, connection_class=MyConn)
    assert_type(annotated.getconn(), MyConn)


def untyped(dsn: str) -> None:
    pool = ConnectionPool(dsn)
    assert_type(pool.getconn(), Any)
    with pool.connection() as conn:
        assert_type(conn, Any)
