"""psycopg 3's automatic prepared statements and the resets the pool runs.

psycopg 3 prepares a query server-side after it ran ``prepare_threshold`` (5) times on a
connection, and remembers the statement's name client-side. A reset that drops server-side
statements (``DISCARD ALL``, ``DEALLOCATE ALL``) must make psycopg forget them too, or the next
run of that query fails with ``prepared statement "_pg3_0" does not exist``. Each test borrows
often enough for psycopg to prepare, and checks server-side that it did.
"""

from __future__ import annotations

from typing import Any

import pytest
from _modern import execute, pid_of, query

from psycopool import ConnectionPool

pytest.importorskip("psycopg")

QUERY = "SELECT %s::int + 1"
ROUNDS = 20


def _times(i: int) -> int:
    """Borrow i runs QUERY once (as an application does), or 6 times (psycopg prepares it)."""
    return 6 if i % 4 == 3 else 1


def _prepared(conn: Any) -> int:
    """How many statements the server has prepared for this session (never prepared itself)."""
    cur = conn.cursor()
    cur.execute("SELECT count(*) FROM pg_prepared_statements", prepare=False)
    n = int(cur.fetchone()[0])
    cur.close()
    return n


def _work(conn: Any, times: int = 1) -> None:
    for i in range(times):
        assert query(conn, QUERY, (i,)) == i + 1


@pytest.mark.parametrize("check", ["liveness", "ping"])
def test_discard_makes_psycopg_forget_its_prepared_statements(dsn: str, check: str):
    with ConnectionPool(
        dsn, min_size=1, max_size=1, reset="discard", check=check, driver="psycopg"
    ) as pool:
        pid = None
        prepared = 0
        for i in range(ROUNDS):
            with pool.connection(timeout=5) as conn:
                assert _prepared(conn) == 0  # the last DISCARD ALL dropped them server-side
                pid = pid if pid is not None else pid_of(conn)
                assert pid_of(conn) == pid  # the same session all along: no churn
                _work(conn, _times(i))  # a stale statement name fails here
                prepared += _prepared(conn) > 0
        stats = pool.stats()
    assert prepared >= ROUNDS // 4  # psycopg did prepare: the test can see the bug
    assert stats["connections_num"] == 1, stats
    assert stats["returns_bad"] == 0 and stats["connections_lost"] == 0, stats


def test_a_callable_reset_dropping_statements_is_noticed(dsn: str):
    def reset(conn: Any) -> None:
        execute(conn, "DEALLOCATE ALL")

    prepared = 0
    with ConnectionPool(dsn, min_size=1, max_size=1, reset=reset, driver="psycopg") as pool:
        for i in range(ROUNDS):
            with pool.connection(timeout=5) as conn:
                _work(conn, _times(i))
                prepared += _prepared(conn) > 0
        assert prepared >= ROUNDS // 4
        assert pool.stats()["connections_num"] == 1


def test_rollback_keeps_prepared_statements(dsn: str):
    """The control: the default reset leaves prepared statements alone (they are the point)."""
    with ConnectionPool(dsn, min_size=1, max_size=1, driver="psycopg") as pool:
        for _ in range(6):
            with pool.connection(timeout=5) as conn:
                _work(conn)
        with pool.connection(timeout=5) as conn:
            assert _prepared(conn) >= 1
        assert pool.stats()["connections_num"] == 1
