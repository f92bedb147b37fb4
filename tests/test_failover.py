"""Failover to a streaming standby, and a primary that turns read-only.

A primary and a hot standby (``pg_basebackup -R -X stream``, ``_topology.py``), a pool on the
multi-host conninfo ``host=primary,standby target_session_attrs=read-write``, 8 threads writing
in a loop. The primary is stopped (``-m immediate``) and the standby promoted, at once or 5 s
later. Asserted: no borrower gets an error except those whose query was in flight when the
primary died; every write afterwards lands on the new primary; the first one within 0.3 s of
the promotion; and while no server accepts writes, connection attempts stay bounded (counted
through a conninfo callable, which the pool calls at every attempt).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from _modern import execute, query, wait_until
from _topology import Standby, new_primary, server_conninfo

from psycopool import ConnectionPool

WORKERS = 8
TABLE = "failover_writes"
#: The first write on the new primary comes this soon after its promotion (issue 10).
FIRST_WRITE_BOUND = 0.3
#: Connection attempts per second while no server accepts writes, at most.
ATTEMPTS_BOUND = 8.0


@dataclass
class Pair:
    primary: Any
    standby: Standby

    def conninfo(self, **params: str) -> str:
        return server_conninfo(self.primary, self.standby, **params)


class Chain:
    """Servers for one module: each test gets the current primary and a new standby of it.

    After a failover the promoted standby is the next test's primary (one initdb per
    module, one ``pg_basebackup`` per test); a primary left broken is replaced.
    """

    def __init__(self) -> None:
        self.primary: Any = None

    def next_pair(self) -> Pair:
        primary = self.primary
        if primary is not None and not _writable(primary):
            primary.cleanup()
            primary = None
        if primary is None:
            primary = new_primary()
            conn = _connect(primary.dsn)
            execute(conn, f"CREATE TABLE {TABLE} (worker int, n int)")
            conn.close()
        self.primary = primary
        standby = Standby(primary)
        standby.start()
        standby.wait_streaming()
        return Pair(primary, standby)

    def done(self, pair: Pair) -> None:
        """Keep the writable one of the pair for the next test; clean up the other."""
        keep, drop = pair.primary, pair.standby
        if _writable(pair.standby):
            keep, drop = pair.standby, pair.primary
        drop.cleanup()
        self.primary = keep

    def cleanup(self) -> None:
        if self.primary is not None:
            self.primary.cleanup()
            self.primary = None


def _writable(server: Any) -> bool:
    if not server.is_running:
        return False
    try:
        conn = _connect(server.dsn)
        try:
            return query(conn, "SHOW transaction_read_only") == "off" and not query(
                conn, "SELECT pg_is_in_recovery()"
            )
        finally:
            conn.close()
    except Exception:
        return False


@pytest.fixture(scope="module")
def chain(pg_server: Any) -> Iterator[Chain]:
    if pg_server.is_external:
        pytest.skip("the server comes from PSYCOPOOL_TEST_DSN: failover needs throwaway servers")
    servers = Chain()
    try:
        yield servers
    finally:
        servers.cleanup()


@pytest.fixture
def pair(chain: Chain) -> Iterator[Pair]:
    """A primary with a streaming standby; the survivor serves the next test."""
    current = chain.next_pair()
    try:
        yield current
    finally:
        chain.done(current)


def _connect(dsn: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


@dataclass
class Load:
    """What the writer threads saw: (monotonic time, server port) per write, errors by phase."""

    writes: list[tuple[float, int]] = field(default_factory=list)
    borrow_errors: list[tuple[float, BaseException]] = field(default_factory=list)
    query_errors: list[tuple[float, BaseException]] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _writer(pool: ConnectionPool[Any], load: Load, worker: int) -> None:
    n = 0
    while not load.stop.is_set():
        n += 1
        try:
            block = pool.connection(timeout=20)
            conn = block.__enter__()
        except Exception as exc:
            with load.lock:
                load.borrow_errors.append((time.monotonic(), exc))
            continue
        try:
            try:
                port = query(
                    conn,
                    f"INSERT INTO {TABLE} VALUES (%s, %s) RETURNING inet_server_port()",
                    (worker, n),
                )
            except BaseException as exc:
                block.__exit__(type(exc), exc, exc.__traceback__)
                raise
            block.__exit__(None, None, None)  # commits
            with load.lock:
                load.writes.append((time.monotonic(), int(port)))
        except Exception as exc:
            with load.lock:
                load.query_errors.append((time.monotonic(), exc))
        time.sleep(0.005)


def _failover(pair: Pair, driver: str, promote_after: float) -> dict[str, float]:
    load = Load()
    dsn = pair.conninfo(target_session_attrs="read-write", connect_timeout="3")

    def conninfo() -> str:  # called by the pool at every connection attempt
        with load.lock:
            load.attempts.append(time.monotonic())
        return dsn

    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo, min_size=4, max_size=8, driver=driver, name="failover"
    )
    threads = [
        threading.Thread(target=_writer, args=(pool, load, w), daemon=True) for w in range(WORKERS)
    ]
    try:
        pool.wait(timeout=15)
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(load.writes) >= 50, timeout=15)
        stop_at = time.monotonic()
        pair.primary.stop()  # pg_ctl stop -m immediate: every connection dies
        stopped_at = time.monotonic()
        time.sleep(promote_after)
        promote_at = time.monotonic()
        promoted_at = pair.standby.promote()
        assert wait_until(lambda: load.writes[-1][0] > promoted_at, timeout=15)
        time.sleep(0.5)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
        pool.close()
    before = [w for w in load.writes if w[0] < stop_at]
    after = [w for w in load.writes if w[0] > stopped_at]
    outage = [a for a in load.attempts if stopped_at < a < promote_at]
    first = after[0][0]
    numbers = {
        "writes": len(load.writes),
        "borrow_errors": len(load.borrow_errors),
        "query_errors": len(load.query_errors),
        "from_stop": first - stop_at,
        "from_promotion": first - promoted_at,
        "from_promote_command": first - promote_at,
        "promote_took": promoted_at - promote_at,
        "outage_attempts": len(outage),
        "attempts_per_s": len(outage) / max(promote_at - stopped_at, 1e-9),
    }
    print(f"\nfailover {driver} promote_after={promote_after}: {numbers}")
    assert not load.borrow_errors, load.borrow_errors[:3]
    # Only writes in flight when the primary died fail, once per worker at most.
    assert len(load.query_errors) <= WORKERS, load.query_errors[:3]
    assert all(t < first for t, _ in load.query_errors), load.query_errors[:3]
    assert {port for _, port in before} == {pair.primary.port}
    assert {port for _, port in after} == {pair.standby.port}
    assert numbers["from_promotion"] < FIRST_WRITE_BOUND, numbers
    if promote_after:
        assert numbers["attempts_per_s"] <= ATTEMPTS_BOUND, numbers
    return numbers


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_failover_promoted_at_once(pair: Pair, driver: str):
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    _failover(pair, driver, 0.0)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_failover_promoted_after_5s(pair: Pair, driver: str):
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    _failover(pair, driver, 5.0)


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_primary_turns_read_only(pair: Pair, driver: str):
    """Host A turns read-only (as a managed service demotes it), host B is writable: the
    first block failing with 25006 drains the pool, and new connections go to B."""
    if driver == "psycopg":
        pytest.importorskip("psycopg")
    a, b = pair.primary, pair.standby
    b.promote()  # now two writable servers (timelines apart): A first in the conninfo
    app = f"readonly-{driver}"
    dsn = pair.conninfo(target_session_attrs="read-write", application_name=app)
    load = Load()
    pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=4, max_size=8, driver=driver, name=app)
    threads = [
        threading.Thread(target=_writer, args=(pool, load, w), daemon=True) for w in range(WORKERS)
    ]
    admin = _connect(a.dsn)
    try:
        pool.wait(timeout=15)
        # The borrower's own read-only transaction failing with 25006 drains nothing.
        with pytest.raises(Exception) as info:
            with pool.connection(timeout=10) as conn:
                if driver == "psycopg":
                    conn.read_only = True
                else:
                    conn.readonly = True
                execute(conn, f"INSERT INTO {TABLE} VALUES (-1, -1)")
        assert _sqlstate(info.value) == "25006"
        assert pool.stats()["connections_drained"] == 0
        for thread in threads:
            thread.start()
        assert wait_until(lambda: len(load.writes) >= 30, timeout=15)
        execute(admin, "ALTER SYSTEM SET default_transaction_read_only = on")
        execute(admin, "SELECT pg_reload_conf()")
        turned_at = time.monotonic()
        assert wait_until(lambda: load.writes[-1][0] > turned_at and load.writes[-1][1] == b.port)
        assert wait_until(lambda: query(admin, _COUNT_APP, (app,)) == 0)
        time.sleep(0.3)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)
        stats = pool.stats()
        pool.close()
        admin.close()
    on_b = [t for t, port in load.writes if t > turned_at and port == b.port]
    print(
        f"\nread-only {driver}: {len(load.query_errors)} blocks failed with 25006, first write"
        f" on the writable host {on_b[0] - turned_at:.3f} s after the reload, stats {stats}"
    )
    assert not load.borrow_errors, load.borrow_errors[:3]
    # Each worker's block fails at most once: the one in flight when A turned read-only.
    assert 1 <= len(load.query_errors) <= WORKERS, load.query_errors[:3]
    assert all(_sqlstate(e) == "25006" for _, e in load.query_errors), load.query_errors[:3]
    last_error = max(t for t, _ in load.query_errors)
    assert {port for t, port in load.writes if t > last_error} == {b.port}
    assert {port for t, port in load.writes if t < turned_at} == {a.port}
    assert stats["connections_drained"] >= 1, stats


def test_primary_turns_read_only_async(pair: Pair):
    """The same with AsyncConnectionPool: 4 writer tasks, A turns read-only, writes go to B."""
    pytest.importorskip("psycopg")
    from _async import run_on

    from psycopool import AsyncConnectionPool

    a, b = pair.primary, pair.standby
    b.promote()
    dsn = pair.conninfo(target_session_attrs="read-write")
    writes: list[tuple[float, int]] = []
    errors: list[tuple[float, BaseException]] = []

    async def main() -> int:
        stop = asyncio.Event()
        async with AsyncConnectionPool(dsn, min_size=2, max_size=4) as pool:

            async def writer() -> None:
                while not stop.is_set():
                    try:
                        async with pool.connection(timeout=10) as conn:
                            cur = await conn.execute(
                                f"INSERT INTO {TABLE} VALUES (0, 0) RETURNING inet_server_port()"
                            )
                            row = await cur.fetchone()
                        writes.append((time.monotonic(), row[0]))
                    except Exception as exc:
                        errors.append((time.monotonic(), exc))
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(writer()) for _ in range(4)]
            while len(writes) < 20:
                await asyncio.sleep(0.01)
            admin = _connect(a.dsn)
            execute(admin, "ALTER SYSTEM SET default_transaction_read_only = on")
            execute(admin, "SELECT pg_reload_conf()")
            admin.close()
            deadline = time.monotonic() + 10
            while writes[-1][1] != b.port and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*tasks)
            return pool.get_stats()["connections_drained"]

    drained = run_on("asyncio", main, timeout=40)
    assert 1 <= len(errors) <= 4, errors[:3]
    assert all(_sqlstate(e) == "25006" for _, e in errors), errors[:3]
    last_error = max(t for t, _ in errors)
    assert {port for t, port in writes if t > last_error} == {b.port}
    assert drained >= 1


_COUNT_APP = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)


def test_a_borrower_cuts_a_long_backoff_short(pg_server: Any, dsn: str):
    """An idle pool whose server has been gone for a while backs off to seconds between
    attempts; a borrower arriving once the server is back is served within about 0.15 s,
    not at the end of the current delay (about 3 s here)."""
    pool: ConnectionPool[Any] = ConnectionPool(dsn, min_size=1, max_size=2)
    try:
        pool.wait(timeout=15)
        pg_server.stop()
        pool.check()  # finds the idle connection dead: the pool reconnects, nobody waiting
        # Attempts at about 0, 0.1, 0.3, 0.7, 1.5 and 3.1 s after the stop, then 6.3 s.
        assert wait_until(lambda: pool.stats()["connections_errors"] >= 6, timeout=15)
        pg_server.start()
        started = time.monotonic()
        with pool.connection(timeout=15) as conn:
            assert query(conn, "SELECT 1") == 1
        waited = time.monotonic() - started
    finally:
        pool.close()
    assert waited < 1.5, waited


def test_backoff_is_short_while_borrowers_wait():
    from psycopool._backoff import BACKOFF_MAX, BACKOFF_WAITING_MAX, Backoff

    idle = Backoff(None, jitter=lambda low, high: 1.0)
    delays = [idle.failed(float(t))[0] for t in range(10)]
    assert delays[0] == pytest.approx(0.1) and delays[-1] == BACKOFF_MAX
    waiting = Backoff(None, jitter=lambda low, high: 1.0)
    delays = [waiting.failed(float(t), waiting=True)[0] for t in range(10)]
    assert delays[0] == pytest.approx(0.1) and max(delays) == BACKOFF_WAITING_MAX
