"""psycopool.sqlalchemy: SQLAlchemy 2 engines (ORM included) on psycopool pools, real server.

Every test counts what the server sees (by application_name) and what the pool still lends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from psycopool import ConnectionPool, PoolTimeout
from psycopool import pool as dropin
from psycopool.sqlalchemy import ReturningConnection, create_engine

MAX = 4
THREADS = 8
REQUESTS = 25  # per thread

DRIVERS = {
    # name: (URL, ConnectionPool arguments)
    "psycopg2": ("postgresql+psycopg2://", {"close_returns": True}),
    "psycopg2-returning-class": ("postgresql+psycopg2://", {"driver": ReturningConnection}),
    "psycopg": ("postgresql+psycopg://", {"driver": "psycopg"}),
    "psycopg-close-returns": (
        "postgresql+psycopg://",
        {"driver": "psycopg", "close_returns": True},
    ),
}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "psycopool_sa_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40), unique=True)


@pytest.fixture(params=sorted(DRIVERS))
def setup(request: pytest.FixtureRequest, dsn: str) -> Iterator[tuple[sa.Engine, ConnectionPool]]:
    url, options = DRIVERS[request.param]
    with ConnectionPool(dsn, min_size=1, max_size=MAX, timeout=10.0, **options) as pool:
        engine = create_engine(url, pool)
        try:
            yield engine, pool
        finally:
            engine.dispose()


class Peak:
    """Samples the server's connection count for this test while the workload runs."""

    def __init__(self, pg_server: Any, app_name: str) -> None:
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pg_server, app_name))

    def _run(self, pg_server: Any, app_name: str) -> None:
        while not self._stop.is_set():
            self.values.append(pg_server.count(app_name))
            time.sleep(0.01)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _run_threads(target: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    return errors


def test_orm_workload(pg_server: Any, app_name: str, setup: Any):
    """Commits, rollbacks, SQL errors inside transactions and isolation levels, 8 threads."""
    engine, pool = setup
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Item(name="taken"))
        session.commit()
    unexpected: list[str] = []
    integrity = [0]

    def requests(n: int) -> None:
        for i in range(REQUESTS):
            kind = i % 5
            with Session(engine) as session:
                if kind == 0:  # commit
                    session.add(Item(name=f"t{n}-{i}"))
                    session.commit()
                elif kind == 1:  # rollback
                    session.add(Item(name=f"r{n}-{i}"))
                    session.flush()
                    session.rollback()
                elif kind == 2:  # SQL error inside a transaction, then the session is reused
                    session.add(Item(name="taken"))
                    try:
                        session.flush()
                    except IntegrityError:
                        integrity[0] += 1
                        session.rollback()
                    else:
                        unexpected.append("duplicate accepted")
                    session.execute(text("SELECT 1"))
                    session.commit()
                elif kind == 3:  # isolation level for this checkout only
                    session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
                    level = session.execute(text("SHOW transaction_isolation")).scalar()
                    if level != "serializable":
                        unexpected.append(f"isolation {level}")
                    session.commit()
                else:  # whatever the last borrower did must not show
                    level = session.execute(text("SHOW transaction_isolation")).scalar()
                    if level != "read committed":
                        unexpected.append(f"leaked isolation {level}")
                    session.scalars(sa.select(Item)).all()

    with Peak(pg_server, app_name) as peak:
        errors = _run_threads(requests)
    assert errors == []
    assert unexpected == []
    assert integrity[0] == THREADS * REQUESTS // 5
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Item)) == 1 + THREADS * 5
    assert max(peak.values) <= MAX
    assert pg_server.count(app_name) <= MAX
    stats = pool.stats()
    assert stats["connections_in_use"] == 0
    assert stats["pool_size"] <= MAX
    # SQLAlchemy's checkouts were pool borrows: a handful of connections, not one per request.
    assert stats["connections_num"] <= MAX
    Base.metadata.drop_all(engine)


def test_invalidate_discards_the_connection(pg_server: Any, app_name: str, setup: Any):
    engine, pool = setup
    with engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        conn.invalidate()
    assert pool.stats()["connections_in_use"] == 0
    admin = pg_server.admin_connect()
    try:
        deadline = time.monotonic() + 5
        while pid in pg_server.pids(app_name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pid not in pg_server.pids(app_name)  # really closed, not pooled again
    finally:
        admin.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid


def test_server_ending_a_checked_out_connection(pg_server: Any, app_name: str, setup: Any):
    engine, pool = setup
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        assert pg_server.terminate(app_name) >= 1
        with pytest.raises(DBAPIError) as info:
            conn.execute(text("SELECT 1"))
        assert info.value.connection_invalidated
    assert pool.stats()["connections_in_use"] == 0
    with engine.connect() as conn:  # the pool replaced what the server ended
        assert conn.execute(text("SELECT 1")).scalar() == 1
    assert pool.stats()["connections_in_use"] == 0
    assert pg_server.count(app_name) <= MAX


def test_dispose_with_a_connection_checked_out(pg_server: Any, app_name: str, setup: Any):
    engine, pool = setup
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        engine.dispose()
        assert conn.execute(text("SELECT 2")).scalar() == 2
    assert pool.stats()["connections_in_use"] == 0
    assert not pool.closed  # the engine doesn't own the pool
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 3")).scalar() == 3
    assert pool.stats()["connections_in_use"] == 0
    assert pg_server.count(app_name) <= MAX


def test_exception_during_checkout_holds_no_slot(setup: Any):
    engine, pool = setup
    calls = [0]

    def fail_once(dbapi_connection: Any, record: Any) -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("connect hook failed")

    event.listen(engine, "connect", fail_once)
    with pytest.raises(RuntimeError, match="connect hook failed"):
        engine.connect()
    assert pool.stats()["connections_in_use"] == 0
    for _ in range(MAX + 1):  # every slot is usable: none was kept by the failure
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    assert pool.stats()["connections_in_use"] == 0


def test_pool_timeout_surfaces_and_leaves_no_slot(dsn: str):
    with ConnectionPool(dsn, min_size=0, max_size=1, driver=ReturningConnection) as pool:
        engine = create_engine("postgresql+psycopg2://", pool)
        with engine.connect():
            started = time.monotonic()
            pool.timeout = 0.2
            with pytest.raises(sa.exc.OperationalError, match="couldn't get a connection") as info:
                engine.connect()
            assert isinstance(info.value.orig, PoolTimeout)
            assert time.monotonic() - started < 5
        assert pool.stats()["connections_in_use"] == 0
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1


def test_dropin_getconn(pg_server: Any, app_name: str, dsn: str):
    """psycopool.pool's ThreadedConnectionPool, which raises instead of waiting."""
    db = dropin.ThreadedConnectionPool(1, MAX, dsn, connection_factory=ReturningConnection)
    try:
        engine = create_engine("postgresql+psycopg2://", db)
        gate = threading.Semaphore(MAX)  # the drop-in raises "exhausted" instead of waiting

        def requests(n: int) -> None:
            for _ in range(REQUESTS):
                with gate, Session(engine) as session:
                    assert session.execute(text("SELECT 1")).scalar() == 1
                    session.commit()

        with Peak(pg_server, app_name) as peak:
            errors = _run_threads(requests)
        assert errors == []
        assert max(peak.values) <= MAX
        held = [db.getconn() for _ in range(MAX)]  # every slot came back
        for conn in held:
            db.putconn(conn)
        engine.dispose()
    finally:
        db.closeall()
    assert pg_server.wait_count(app_name, 0) == 0


def test_plain_psycopg2_pool_is_refused_and_returned(dsn: str):
    with ConnectionPool(dsn, min_size=0, max_size=1) as pool:
        engine = create_engine("postgresql+psycopg2://", pool)
        with pytest.raises(TypeError, match="close_returns=True"):
            engine.connect()
        assert pool.stats()["connections_in_use"] == 0


def test_create_engine_arguments(dsn: str):
    with pytest.raises(TypeError, match="poolclass"):
        create_engine("postgresql+psycopg2://", object(), poolclass=sa.pool.QueuePool)
    with pytest.raises(TypeError, match="pool must be a psycopool pool; got str"):
        create_engine("postgresql+psycopg2://", "host=db")


def test_isolation_restore_costs_no_round_trip(pg_server: Any, app_name: str, dsn: str):
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=ReturningConnection) as pool:
        engine = create_engine("postgresql+psycopg2://", pool)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="SERIALIZABLE")
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
            conn.commit()
        # SQLAlchemy put READ COMMITTED back, psycopool restored its default: no SQL sent
        admin = pg_server.admin_connect()
        try:
            with admin.cursor() as cur:
                cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
                assert cur.fetchone()[0] == "COMMIT"
        finally:
            admin.close()


def test_psycopg_notice_handlers_do_not_pile_up(dsn: str, caplog: pytest.LogCaptureFixture):
    with ConnectionPool(dsn, min_size=1, max_size=1, driver="psycopg") as pool:
        engine = create_engine("postgresql+psycopg://", pool)
        for _ in range(5):  # the same server connection, checked out five times
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        with caplog.at_level(logging.INFO, logger="sqlalchemy.dialects.postgresql"):
            with engine.connect() as conn:
                conn.execute(text("DO $$ BEGIN RAISE NOTICE 'psycopool-notice'; END $$"))
        notices = [r for r in caplog.records if "psycopool-notice" in r.getMessage()]
        assert len(notices) == 1
