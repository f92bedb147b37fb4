"""Issue 13, deliverable 3: a stateful property test over both front doors and both drivers.

Hypothesis drives a pool through random sequences of borrows and returns
(clean, mid-transaction, in error, closed by the user, ``close=True``,
twice, into the wrong pool), keys, prune/check, resize, drain, backend
kills (``pg_terminate_backend``) and a KeyboardInterrupt during a return.
After every step: no connection is lent twice, the pool's own count equals
the server's ``pg_stat_activity`` count for the pool's unique
``application_name`` and never exceeds the maximum, and every idle
connection is healthy. After close, the server has nothing left.

CI runs a bounded number of examples (about 20 s per front door); set
``PSYCOPOOL_HYPOTHESIS_EXAMPLES=N`` for N examples of each (e.g. 500 for a soak).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import psycopg
import psycopg2
import pytest
from _pg import with_app_name
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_interrupts import Pg2Interrupting, Pg3Interrupting

from psycopool import ConnectionPool, PoolTimeout, pool
from psycopool._drivers import IDLE

EXAMPLES = int(os.environ.get("PSYCOPOOL_HYPOTHESIS_EXAMPLES", "0")) or None
MAX_SIZE = 3
_names = itertools.count(1)
DRIVER_ERRORS = (psycopg2.Error, psycopg.Error)


def _settings(default_examples: int) -> settings:
    return settings(
        max_examples=EXAMPLES or default_examples,
        stateful_step_count=15,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
        derandomize=EXAMPLES is None,  # CI: the same examples every run
    )


def _run(conn: Any, sql: str) -> None:
    cur = conn.cursor()
    try:
        cur.execute(sql)
    finally:
        if not conn.closed:
            cur.close()


class Door:
    """What the machine needs from a front door."""

    modern: bool
    not_lent: type[Exception]

    def __init__(self, pg_server: Any, driver: str) -> None:
        self.pg_server = pg_server
        self.driver = driver
        self.app_name = f"psycopool-sm-{os.getpid()}-{next(_names)}"
        self.dsn = with_app_name(pg_server.dsn, self.app_name)
        self.conn_class: Any = Pg2Interrupting if driver == "psycopg2" else Pg3Interrupting


class Modern(Door):
    modern = True
    not_lent = ValueError

    def open(self) -> None:
        self.pool: Any = ConnectionPool(
            self.dsn, min_size=1, max_size=MAX_SIZE, timeout=5.0, driver=self.conn_class
        )
        self.pool.wait(timeout=10)
        self.other: Any = ConnectionPool(self.dsn + "x", min_size=0, max_size=1, driver=self.driver)

    def getconn(self, key: Any = None) -> Any:
        return self.pool.getconn(timeout=5.0)

    def getconn_full(self) -> None:
        with pytest.raises(PoolTimeout):
            self.pool.getconn(timeout=0.05)

    def putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
        self.pool.putconn(conn)

    def size(self) -> int:
        return int(self.pool.stats()["pool_size"])

    def max_size(self) -> int:
        return int(self.pool.max_size)

    def prune(self) -> None:
        self.pool.check()

    def close(self) -> None:
        self.pool.close(timeout=1.0)
        self.other.close(timeout=1.0)


class DropIn(Door):
    modern = False
    not_lent = pool.PoolError

    def open(self) -> None:
        self.pool = pool.ThreadedConnectionPool(
            1, MAX_SIZE, self.dsn, connection_factory=self.conn_class, idle_timeout=None
        )
        self.other = pool.ThreadedConnectionPool(0, 1, self.dsn + "x")

    def getconn(self, key: Any = None) -> Any:
        return self.pool.getconn(key)

    def getconn_full(self) -> None:
        with pytest.raises(pool.PoolError, match="exhausted"):
            self.pool.getconn()

    def putconn(self, conn: Any, key: Any = None, close: bool = False) -> None:
        self.pool.putconn(conn, key, close=close)

    def size(self) -> int:
        return int(self.pool._engine.size)

    def max_size(self) -> int:
        return int(self.pool.maxconn)

    def prune(self) -> None:
        self.pool.prune()

    def close(self) -> None:
        self.pool.closeall()
        self.other.closeall()


class PoolMachine(RuleBasedStateMachine):
    door: Door

    def __init__(self) -> None:
        super().__init__()
        self.door.open()
        #: id(conn) -> (conn, key) for what the model says is lent.
        self.lent: dict[int, tuple[Any, Any]] = {}
        #: ids of lent connections whose backend was killed: counted by the pool
        #: (it can't know until they come back), gone from the server.
        self.dead: set[int] = set()
        self.killed = False

    # -- helpers -------------------------------------------------------------------------

    def _pick(self, data: st.DataObject) -> tuple[Any, Any]:
        ident = data.draw(st.sampled_from(sorted(self.lent)))
        return self.lent[ident]

    def _return(self, conn: Any, key: Any, close: bool = False) -> None:
        del self.lent[id(conn)]
        self.dead.discard(id(conn))
        self.door.putconn(conn, key, close)

    # -- rules ---------------------------------------------------------------------------

    @rule(key=st.sampled_from([None, None, "a", "b"]))
    def getconn(self, key: Any) -> None:
        door = self.door
        if key is not None and not door.modern:
            for conn, k in self.lent.values():
                if k == key:  # the same key gives the same connection
                    assert door.getconn(key) is conn
                    return
        else:
            key = None
        if len(self.lent) >= door.max_size():
            door.getconn_full()
            return
        conn = door.getconn(key)
        assert id(conn) not in self.lent, "a connection lent twice"
        self.lent[id(conn)] = (conn, key)
        _run(conn, "SELECT 1")  # never lent dead: kills were noticed (prune/check) before

    @precondition(lambda self: self.lent)
    @rule(data=st.data(), how=st.sampled_from(["clean", "intrans", "inerror", "closed"]))
    def putconn(self, data: st.DataObject, how: str) -> None:
        conn, key = self._pick(data)
        try:
            if how == "intrans":
                _run(conn, "SELECT 1")
            elif how == "inerror":
                try:
                    _run(conn, "SELECT 1/0")
                except DRIVER_ERRORS:
                    pass
            elif how == "closed":
                conn.close()
            elif not conn.closed:
                conn.commit()
        except DRIVER_ERRORS:
            pass  # killed meanwhile: the pool discards it
        self._return(conn, key)
        if not conn.closed:
            assert self.door.pool._engine.driver.transaction_status(conn) == IDLE

    @precondition(lambda self: self.lent and not self.door.modern)
    @rule(data=st.data())
    def putconn_close(self, data: st.DataObject) -> None:
        conn, key = self._pick(data)
        self._return(conn, key, close=True)
        assert conn.closed

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def putconn_twice(self, data: st.DataObject) -> None:
        conn, key = self._pick(data)
        self._return(conn, key)
        with pytest.raises(self.door.not_lent):
            self.door.putconn(conn)

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def putconn_wrong_pool(self, data: st.DataObject) -> None:
        conn, _ = self._pick(data)
        with pytest.raises(self.door.not_lent):
            self.door.other.putconn(conn)

    @precondition(lambda self: self.lent)
    @rule(data=st.data())
    def putconn_interrupted(self, data: st.DataObject) -> None:
        """A KeyboardInterrupt while the return rolls back: the slot comes back."""
        conn, key = self._pick(data)
        if type(conn) is not self.door.conn_class or conn.closed:
            return
        try:
            _run(conn, "SELECT 1")  # a transaction to roll back
        except DRIVER_ERRORS:
            return  # killed: nothing to roll back
        type(conn).armed = True
        del self.lent[id(conn)]
        self.dead.discard(id(conn))
        try:
            with pytest.raises(KeyboardInterrupt):
                self.door.putconn(conn, key)
        finally:
            type(conn).armed = False

    @rule()
    def prune(self) -> None:
        self.door.prune()

    @precondition(lambda self: self.door.modern)
    @rule(max_size=st.integers(1, MAX_SIZE + 1))
    def resize(self, max_size: int) -> None:
        max_size = max(max_size, len(self.lent))  # lent connections above it close on return
        if max_size >= 1:
            self.door.pool.resize(min(1, max_size), max_size)

    @precondition(lambda self: self.door.modern)
    @rule()
    def drain(self) -> None:
        self.door.pool.drain()

    @rule()
    def kill_backends(self) -> None:
        self.door.pg_server.terminate(self.door.app_name)
        self.dead.update(self.lent)
        self.killed = True
        self._settle_kills()

    def _settle_kills(self) -> None:
        """Let the clients see the kills (the FATAL notice arrives after the backend is gone)."""
        time.sleep(0.05)
        self.door.prune()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def books_match_the_server(self) -> None:
        door = self.door
        pg_server = door.pg_server
        deadline = time.monotonic() + 5
        while True:
            size = door.size()
            server = pg_server.count(door.app_name) + len(self.dead)
            if size == server or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert size == server, f"pool counts {size}, the server has {server} (with lent dead)"
        assert size <= max(door.max_size(), len(self.lent)), (size, door.max_size())

    @invariant()
    def idle_connections_are_healthy(self) -> None:
        engine = self.door.pool._engine
        with engine.lock:
            idle = list(engine.idle)
        for entry in idle:
            conn = entry.conn
            if conn is None:
                continue
            assert not engine.driver.is_closed(conn) or self.killed
            if not engine.driver.is_closed(conn):
                assert engine.driver.transaction_status(conn) == IDLE

    def teardown(self) -> None:
        door = self.door
        try:
            for conn, key in list(self.lent.values()):
                try:
                    door.putconn(conn, key)
                except Exception:
                    pass
        finally:
            door.close()
        assert door.pg_server.wait_count(door.app_name, 0) == 0, "connections left after close"


DOORS = [
    pytest.param(Modern, "psycopg2", id="ConnectionPool-psycopg2"),
    pytest.param(Modern, "psycopg", id="ConnectionPool-psycopg"),
    pytest.param(DropIn, "psycopg2", id="pool.ThreadedConnectionPool"),
]


@pytest.mark.parametrize(("door_cls", "driver"), DOORS)
def test_pool_state_machine(door_cls: type[Door], driver: str, pg_server: Any) -> None:
    class Machine(PoolMachine):
        def __init__(self) -> None:
            self.door = door_cls(pg_server, driver)
            super().__init__()

    run_state_machine_as_test(Machine, settings=_settings(12))
