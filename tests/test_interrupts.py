"""Issue 13, bug 2: an interrupt during a borrow or a return never loses a slot.

A KeyboardInterrupt raised while a returned connection is being reset, on
both front doors and both drivers, leaves the pool's books right: the
connection is closed, its slot is free again, and every later borrow works.
Then a storm: asynchronous exceptions injected at random moments into
threads that borrow and return (what Ctrl-C, a SystemExit from a signal
handler or a timeout library do); afterwards the pool still lends all its
``max_size`` connections, and its count equals the server's.
"""

from __future__ import annotations

import gc
import os
import random
import time
from typing import Any

import psycopg
import psycopg2
import psycopg2.extensions
import pytest
from _interrupts import Storm, summary
from _modern import wait_until

from psycopool import ConnectionPool, PoolTimeout, pool

DRIVERS = ["psycopg2", "psycopg"]

#: Injections per storm and its length; PSYCOPOOL_INTERRUPT_STORM=N multiplies both.
_SCALE = max(1, int(os.environ.get("PSYCOPOOL_INTERRUPT_STORM", "1")))
STORM_INJECTIONS = 150 * _SCALE
STORM_SECONDS = 3.0 * _SCALE


# -- a KeyboardInterrupt during the reset of a returned connection ----------------------------


class _InterruptOnce:
    """Mixed into a connection class: the first rollback (the pool's reset) raises Ctrl-C."""

    armed = False

    def rollback(self) -> None:
        if type(self).armed:
            type(self).armed = False
            raise KeyboardInterrupt
        super().rollback()  # type: ignore[misc]


class Pg2Interrupting(_InterruptOnce, psycopg2.extensions.connection):
    armed = False


class Pg3Interrupting(_InterruptOnce, psycopg.Connection):  # type: ignore[type-arg]
    armed = False


def _server_matches(pg_server: Any, app_name: str, size: int) -> None:
    assert pg_server.wait_count(app_name, size) == size


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_interrupt_during_reset_frees_the_slot(
    driver: str, pg_server: Any, app_name: str, dsn: str
) -> None:
    cls = Pg2Interrupting if driver == "psycopg2" else Pg3Interrupting
    with ConnectionPool(dsn, min_size=0, max_size=1, driver=cls) as p:
        conn = p.getconn(timeout=10)
        cur = conn.cursor()
        cur.execute("SELECT 1")  # INTRANS: the return has to roll back
        cur.close()
        cls.armed = True
        with pytest.raises(KeyboardInterrupt):
            p.putconn(conn)
        assert not cls.armed
        stats = p.stats()
        # The interrupted connection was closed: nothing is left counted for it.
        assert wait_until(lambda: p.stats()["pool_size"] <= 1)
        assert stats["connections_in_use"] == 0
        again = p.getconn(timeout=5)  # the only slot is free again
        assert again is not conn
        p.putconn(again)
        _server_matches(pg_server, app_name, p.stats()["pool_size"])
    _server_matches(pg_server, app_name, 0)


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_interrupt_in_reset_function_frees_the_slot(
    driver: str, pg_server: Any, app_name: str, dsn: str
) -> None:
    calls = []

    def reset(conn: Any) -> None:
        calls.append(conn)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with ConnectionPool(dsn, min_size=0, max_size=1, driver=driver, reset=reset) as p:
        conn = p.getconn(timeout=10)
        with pytest.raises(KeyboardInterrupt):
            p.putconn(conn)
        assert conn.closed
        again = p.getconn(timeout=5)
        p.putconn(again)
        assert p.stats()["connections_in_use"] == 0
        _server_matches(pg_server, app_name, p.stats()["pool_size"])
    _server_matches(pg_server, app_name, 0)


@pytest.mark.parametrize("pool_cls", [pool.SimpleConnectionPool, pool.ThreadedConnectionPool])
def test_dropin_interrupt_during_reset_frees_the_slot(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str
) -> None:
    p = pool_cls(0, 1, dsn, connection_factory=Pg2Interrupting, idle_timeout=None)
    try:
        conn = p.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        Pg2Interrupting.armed = True
        with pytest.raises(KeyboardInterrupt):
            p.putconn(conn)
        assert conn.closed
        again = p.getconn()  # not "connection pool exhausted"
        assert again is not conn
        p.putconn(again)
        _server_matches(pg_server, app_name, 1)
    finally:
        p.closeall()
    _server_matches(pg_server, app_name, 0)


# -- a storm of asynchronous exceptions ------------------------------------------------------


def _use(conn: Any, rng: random.Random, driver: str) -> str:
    """Do one random thing with a borrowed connection; how it is left."""
    action = rng.random()
    cur = conn.cursor()
    try:
        if action < 0.4:
            cur.execute("SELECT 1")
            conn.commit()
            return "clean"
        if action < 0.6:
            cur.execute("SELECT 1")  # left in a transaction
            return "intrans"
        if action < 0.75:
            try:
                cur.execute("SELECT 1/0")
            except (psycopg2.Error, psycopg.Error):
                pass
            return "inerror"
        if action < 0.85:
            conn.autocommit = True
            return "autocommit"
        if action < 0.9:
            conn.close()
            return "closed"
        return "untouched"
    finally:
        if not conn.closed:
            cur.close()


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_storm_of_interrupts(driver: str, pg_server: Any, app_name: str, dsn: str) -> None:
    max_size = 3
    with ConnectionPool(
        dsn, min_size=1, max_size=max_size, driver=driver, timeout=2.0, max_idle=None
    ) as p:
        p.wait(timeout=10)

        def round(worker: Any, rng: random.Random) -> None:
            box: list[Any] = []
            try:
                box.append(p.getconn(timeout=2.0))
                _use(box[0], rng, driver)
            finally:
                if box:
                    p.putconn(box.pop())

        def recover(worker: Any) -> None:
            pass  # a connection lost between getconn() and the borrower: garbage, reclaimed

        storm = Storm(
            round,
            recover,
            threads=6,
            injections=STORM_INJECTIONS,
            duration=STORM_SECONDS,
            expected=lambda exc: isinstance(exc, PoolTimeout),
            seed=random.randrange(1 << 30),
        )
        storm.run()
        info = summary(storm) | {"seed": storm.seed, "stats": p.stats()}
        assert not storm.errors, (storm.errors[:3], info)
        assert storm.caught == storm.sent and storm.sent >= STORM_INJECTIONS // 6, info
        gc.collect()
        # Every slot can be had again, within the pool's own means (reclaiming dropped loans).
        conns = [p.getconn(timeout=10) for _ in range(max_size)]
        for conn in conns:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.close()
        assert len({id(c) for c in conns}) == max_size
        stats = p.stats()
        assert stats["pool_size"] == max_size, (stats, info)
        assert pg_server.wait_count(app_name, max_size) == max_size, info
        for conn in conns:
            p.putconn(conn)
        assert wait_until(lambda: p.stats()["pool_size"] == pg_server.count(app_name)), (
            p.stats(),
            pg_server.count(app_name),
        )
    _server_matches(pg_server, app_name, 0)


@pytest.mark.parametrize("pool_cls", [pool.SimpleConnectionPool, pool.ThreadedConnectionPool])
def test_dropin_storm_of_interrupts(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str
) -> None:
    maxconn = 3
    p = pool_cls(1, maxconn, dsn, idle_timeout=None)
    try:

        def round(worker: Any, rng: random.Random) -> None:
            key = f"w{worker.index}"  # a key: a borrow the interrupt cut short is found again
            conn = p.getconn(key)
            try:
                state = _use(conn, rng, "psycopg2")
            except BaseException:
                p.putconn(conn, key)
                raise
            p.putconn(conn, key, close=state == "untouched" and rng.random() < 0.5)

        def recover(worker: Any) -> None:
            key = f"w{worker.index}"
            try:
                conn = p.getconn(key)  # the one lent under this key, if any
            except pool.PoolError:
                return  # exhausted: nothing is lent under this key
            p.putconn(conn, key)

        storm = Storm(
            round,
            recover,
            threads=4,  # one more than maxconn: "exhausted" happens, and is expected
            injections=STORM_INJECTIONS,
            duration=STORM_SECONDS,
            expected=lambda exc: isinstance(exc, pool.PoolError) and "exhausted" in str(exc),
            seed=random.randrange(1 << 30),
        )
        storm.run()
        info = summary(storm) | {"seed": storm.seed}
        assert not storm.errors, (storm.errors[:3], info)
        assert storm.caught == storm.sent and storm.sent >= STORM_INJECTIONS // 6, info
        engine = p._engine
        info["books"] = {
            "idle": len(engine.idle),
            "in_use": len(engine.in_use),
            "pending": engine.pending,
            "closing": engine.closing,
            "server": pg_server.count(app_name),
        }
        assert not engine.in_use and not p._used, info
        assert engine.pending == 0 and engine.closing == 0, info
        conns = [p.getconn() for _ in range(maxconn)]  # never "exhausted"
        for conn in conns:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        assert engine.size == maxconn, info
        assert pg_server.wait_count(app_name, maxconn) == maxconn, info
        for conn in conns:
            p.putconn(conn)
        deadline = time.monotonic() + 5
        while engine.size != pg_server.count(app_name) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.size == pg_server.count(app_name), info
    finally:
        p.closeall()
    _server_matches(pg_server, app_name, 0)
