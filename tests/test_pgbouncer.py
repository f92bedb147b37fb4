"""Behind a real PgBouncer, in session and in transaction pooling mode.

16 threads of mixed work (repeated queries psycopg 3 would prepare, writes, multi-statement
transactions, SET LOCAL, read-only and autocommit borrows) through two pools sharing one
PgBouncer: zero errors, every write counted, and no setting of one pool ever seen by the other.
The PgBouncer fixtures (conftest.py, ``_topology.py``) skip where pgbouncer is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2
import pytest
from _modern import query
from _topology import PgBouncer

from psycopool import ConnectionPool
from psycopool import pool as dropin

DRIVERS = ["psycopg2", "psycopg"]
THREADS = 16
BORROWS = 40  # per thread
TABLE = "psycopool_bouncer_writes"
TAG_GUC = "psycopool.tag"


@pytest.fixture(scope="module")
def table(pg_server: Any) -> str:
    conn = pg_server.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (tag text, n int)")
    finally:
        conn.close()
    return TABLE


def _written(pg_server: Any, tag: str) -> int:
    conn = pg_server.admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {TABLE} WHERE tag = %s", (tag,))
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _set_readonly(conn: Any, value: bool | None) -> None:
    if hasattr(conn, "read_only"):  # psycopg 3
        conn.read_only = value
    else:
        conn.readonly = value


def _not_leaked(conn: Any, tag: str) -> None:
    """Nothing another borrower set is visible here: no tag, not read-only, read committed."""
    seen = query(conn, "SELECT current_setting(%s, true)", (TAG_GUC,))
    assert seen in (None, ""), f"{tag} sees {TAG_GUC}={seen!r}"
    assert query(conn, "SHOW transaction_read_only") == "off", tag
    assert query(conn, "SHOW transaction_isolation") == "read committed", tag


def mixed_work(conn: Any, i: int, tag: str, *, readonly: bool) -> bool:
    """One borrow's work, chosen by ``i``; True if it wrote a row."""
    kind = i % 6
    if kind == 0:  # the same statement again and again: psycopg 3 prepares it by default
        for j in range(3):
            assert query(conn, "SELECT %s::int * 2", (j,)) == j * 2
        _not_leaked(conn, tag)
    elif kind == 1:  # a write
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} (tag, n) VALUES (%s, %s)", (tag, i))
        return True
    elif kind == 2:  # SET LOCAL: lives as long as the transaction, on any pooler
        query(conn, "SELECT set_config(%s, %s, true)", (TAG_GUC, tag))
        assert query(conn, "SELECT current_setting(%s)", (TAG_GUC,)) == tag
        with conn.cursor() as cur:
            cur.execute(f"INSERT INTO {TABLE} (tag, n) VALUES (%s, %s)", (tag, i))
        return True
    elif kind == 3 and readonly:  # a read-only borrow: BEGIN READ ONLY, nothing session-wide
        conn.rollback()
        _set_readonly(conn, True)
        assert query(conn, "SHOW transaction_read_only") == "on"
    elif kind == 4:  # autocommit for a while
        conn.rollback()
        conn.autocommit = True
        assert query(conn, "SELECT 1") == 1
        _not_leaked(conn, tag)
    else:
        _not_leaked(conn, tag)
    return False


def _run_threads(n: int, work: Callable[[int], None], timeout: float = 90.0) -> list[BaseException]:
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            work(t)
        except BaseException as exc:  # recorded, then asserted empty
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "workers still running after the timeout"
    return errors


def _two_pools(
    bouncer: PgBouncer, app_name: str, pg_server: Any, **pool_kwargs: Any
) -> dict[str, Any]:
    """Pools A (read-only borrows too) and B (writes), 8 threads each, mixed work."""
    tags = {"A": f"{app_name}-A", "B": f"{app_name}-B"}
    pools = {
        key: ConnectionPool(bouncer.dsn, min_size=2, max_size=6, name=tags[key], **pool_kwargs)
        for key in tags
    }
    writes = {key: 0 for key in tags}
    lock = threading.Lock()

    def work(t: int) -> None:
        key = "AB"[t % 2]
        wrote = 0
        for i in range(BORROWS):
            with pools[key].connection(timeout=20) as conn:
                wrote += mixed_work(conn, t + i, tags[key], readonly=key == "A")
        with lock:
            writes[key] += wrote

    try:
        errors = _run_threads(THREADS, work)
        stats = {key: pools[key].stats() for key in pools}
    finally:
        for p in pools.values():
            p.close()
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    for key, tag in tags.items():
        assert _written(pg_server, tag) == writes[key] > 0
        assert stats[key]["requests_errors"] == 0, stats[key]
    return stats


@pytest.mark.parametrize("driver", DRIVERS)
def test_session_mode_defaults(
    pgbouncer_session: PgBouncer, pg_server: Any, table: str, app_name: str, driver: str
):
    """Session pooling is a plain server to the pool: default settings, reset='discard' too."""
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    _two_pools(pgbouncer_session, app_name, pg_server, driver=driver)
    _two_pools(pgbouncer_session, app_name + "d", pg_server, driver=driver, reset="discard")


@pytest.mark.parametrize("driver", DRIVERS)
def test_transaction_mode(
    pgbouncer_transaction: PgBouncer, pg_server: Any, table: str, app_name: str, driver: str
):
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    stats = _two_pools(
        pgbouncer_transaction, app_name, pg_server, driver=driver, pooler="transaction"
    )
    # Nothing was closed for being unclean: every restore was client-side.
    assert all(s["returns_bad"] == 0 for s in stats.values()), stats


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_dropin(request: pytest.FixtureRequest, pg_server: Any, table: str, app_name: str, mode):
    """psycopg2.pool's drop-in behind PgBouncer, with an idle_timeout as the docs advise."""
    bouncer: PgBouncer = request.getfixturevalue(f"pgbouncer_{mode}")
    tag = f"{app_name}-{mode}"
    db = dropin.ThreadedConnectionPool(2, THREADS, bouncer.dsn, idle_timeout=60)
    writes = [0] * THREADS

    def work(t: int) -> None:
        for i in range(BORROWS):
            conn = db.getconn()
            try:
                writes[t] += mixed_work(conn, t + i, tag, readonly=True)
                conn.commit()
            finally:
                db.putconn(conn)

    try:
        errors = _run_threads(THREADS, work)
        opened = db._engine.connections_num
    finally:
        db.closeall()
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    assert _written(pg_server, tag) == sum(writes) > 0
    assert opened <= THREADS  # idle_timeout keeps what a burst opened


def test_transaction_mode_turns_off_psycopg_prepared_statements(
    pgbouncer_transaction: PgBouncer, app_name: str
):
    pytest.importorskip("psycopg")
    dsn = pgbouncer_transaction.dsn
    with ConnectionPool(dsn, min_size=1, driver="psycopg", pooler="transaction") as pool:
        with pool.connection(timeout=10) as conn:
            assert conn.prepare_threshold is None
    # Asked for explicitly (PgBouncer >= 1.21 with max_prepared_statements): kept.
    with ConnectionPool(
        dsn, min_size=1, driver="psycopg", pooler="transaction", kwargs={"prepare_threshold": 3}
    ) as pool:
        with pool.connection(timeout=10) as conn:
            assert conn.prepare_threshold == 3


def test_transaction_mode_refuses_discard():
    with pytest.raises(ValueError, match=r"reset='discard'.*pooler='transaction'"):
        ConnectionPool("", reset="discard", pooler="transaction", open=False)
    with pytest.raises(ValueError, match=r"pooler must be .*got 'statement'"):
        ConnectionPool("", pooler="statement", open=False)


def test_transaction_mode_never_restores_by_set(
    pgbouncer_transaction: PgBouncer, app_name: str, caplog: pytest.LogCaptureFixture
):
    """A psycopg2 borrower that changes readonly/isolation in autocommit mode made psycopg2
    send a session SET, which landed on some server connection: the pool does not send a
    second one to another server connection to "undo" it; it closes the client connection."""
    dsn = pgbouncer_transaction.dsn
    try:
        with ConnectionPool(dsn, min_size=1, max_size=1, pooler="transaction") as pool:
            conn = pool.getconn(timeout=10)
            conn.autocommit = True
            conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ
            with caplog.at_level(logging.WARNING, logger="psycopool"):
                pool.putconn(conn)
            assert conn.closed
            assert "session SET" in caplog.text
            with pool.connection(timeout=10) as conn2:
                assert conn2 is not conn
                assert (conn2.autocommit, conn2.isolation_level) == (False, None)
            # Outside autocommit psycopg2 keeps them client-side: restored, connection kept.
            with pool.connection(timeout=10) as conn3:
                conn3.readonly = True
                conn3.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE
                assert query(conn3, "SHOW transaction_isolation") == "serializable"
            with pool.connection(timeout=10) as conn4:
                assert conn4 is conn3
                assert (conn4.readonly, conn4.isolation_level) == (None, None)
    finally:
        # The borrower's own SET is on some server connection: have PgBouncer replace them all.
        pgbouncer_transaction.admin("RECONNECT")


def test_async_pool_transaction_mode(pgbouncer_transaction: PgBouncer, pg_server: Any, table: str):
    """AsyncConnectionPool with pooler="transaction": 16 tasks of mixed work, zero errors."""
    pytest.importorskip("psycopg")
    from _async import run_on

    from psycopool import AsyncConnectionPool

    tag = "async-transaction"
    written = 0

    async def main() -> None:
        nonlocal written
        async with AsyncConnectionPool(
            pgbouncer_transaction.dsn, min_size=2, max_size=6, pooler="transaction"
        ) as pool:

            async def work(t: int) -> int:
                wrote = 0
                for i in range(BORROWS):
                    async with pool.connection(timeout=20) as conn:
                        assert conn.prepare_threshold is None
                        if (t + i) % 3 == 0:
                            await conn.execute(
                                f"INSERT INTO {TABLE} (tag, n) VALUES (%s, %s)", (tag, i)
                            )
                            wrote += 1
                        elif (t + i) % 3 == 1:
                            await conn.execute("SELECT set_config(%s, %s, true)", (TAG_GUC, tag))
                        else:
                            for j in range(3):  # would be prepared without pooler=
                                cur = await conn.execute("SELECT %s::int * 2", (j,))
                                assert (await cur.fetchone())[0] == j * 2
                            cur = await conn.execute("SELECT current_setting(%s, true)", (TAG_GUC,))
                            assert (await cur.fetchone())[0] in (None, "")
                return wrote

            written = sum(await asyncio.gather(*(work(t) for t in range(THREADS))))

    run_on("asyncio", main, timeout=90)
    assert _written(pg_server, tag) == written > 0
