"""Every row of COMPAT.md's "psycopg2 bugs that the drop-in fixes" table.

The fork row is tested in test_dropin_faults.py (with the other process- and server-level faults);
the rest are here, one section per row, in the table's order.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg2
import psycopg2.extensions
import pytest
from _dropin import (
    FakeClock,
    PoolFactory,
    backend_pid,
    backend_state,
    both_pools,
    select_one,
    show,
    wait_readable,
    with_clock,
)

from psycopool import pool

EXHAUSTED = "connection pool exhausted"
UNKEYED = "trying to put unkeyed connection"
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


# -- minconn > maxconn / negatives; the bound is always maxconn --------------------------------
# (Every bad argument's message: test_dropin_args.py.)


@both_pools
@pytest.mark.parametrize(("minconn", "maxconn"), [(3, 2), (-1, 2), (2, -1), (0, -1)])
def test_unbounded_configurations_are_refused(
    pool_cls: type[Any], minconn: int, maxconn: int, pg_server: Any, app_name: str, dsn: str
) -> None:
    with pytest.raises(ValueError):
        pool_cls(minconn, maxconn, dsn)
    assert pg_server.count(app_name) == 0


@both_pools
def test_bound_holds_through_a_random_mix_of_calls(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    maxconn = 3
    # idle_timeout=None: no connection is ever closed, so the server count can't lag.
    p = make_pool(pool_cls, 1, maxconn, dsn, idle_timeout=None)
    rng = random.Random(1234)
    out: dict[Any, Any] = {}  # key -> connection, the model of what is checked out
    for _ in range(150):
        action = rng.choice(["get", "getkey", "getkey", "put", "putkey"])
        if action in ("get", "getkey"):
            key = rng.choice(["a", "b", "c", "d", 0, 7]) if action == "getkey" else None
            if key is not None and key in out:
                assert p.getconn(key) is out[key]
                continue
            if len(out) >= maxconn:
                with pytest.raises(pool.PoolError, match=EXHAUSTED):
                    p.getconn(key)
                continue
            conn = p.getconn(key)
            assert all(conn is not c for c in out.values())
            out[key if key is not None else ("gen", id(conn))] = conn
        elif out:
            key = rng.choice(list(out))
            conn = out.pop(key)
            if action == "putkey" and not (isinstance(key, tuple) and key[0] == "gen"):
                p.putconn(conn, key=key)
            else:
                p.putconn(conn)
        assert pg_server.count(app_name) <= maxconn
    assert pg_server.count(app_name) <= maxconn


# -- dead idle connections are detected and replaced ------------------------------------------
# (Deeper cases, server restart and all-dead pools: test_dropin_faults.py.)


@both_pools
def test_idle_connection_killed_by_server_is_not_handed_out(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 2, 3, dsn, idle_timeout=None)
    a, b = p.getconn(), p.getconn()
    pid_a, pid_b = backend_pid(a), backend_pid(b)
    p.putconn(a)
    p.putconn(b)  # b is on top of the idle stack
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (pid_b,))
    finally:
        admin.close()
    assert pg_server.wait_count(app_name, 1) == 1
    wait_readable(b)
    time.sleep(0.01)  # past the 0.1 ms "recently used" window (test_dropin_faults.py)
    first = p.getconn()
    assert select_one(first) == 1
    assert backend_pid(first) != pid_b
    second = p.getconn()
    assert select_one(second) == 1
    assert pid_a in {backend_pid(first), backend_pid(second)}


@both_pools
@pytest.mark.parametrize("pause", [0, 1.0])
def test_idle_connection_closed_by_user_is_not_handed_out(
    pool_cls: type[Any],
    pause: float,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    # A hand-driven clock makes "returned moments ago" deterministic.
    clock = FakeClock()
    p = make_pool(with_clock(pool_cls, clock), 1, 2, dsn, idle_timeout=None)
    conn = p.getconn()
    p.putconn(conn)
    conn.close()  # the user kept a reference and closed it while it sat idle
    clock.advance(pause)
    fresh = p.getconn()
    assert fresh is not conn
    assert not fresh.closed
    assert select_one(fresh) == 1
    # The dead one no longer takes a slot.
    other = p.getconn()
    assert other is not fresh
    assert select_one(other) == 1


@both_pools
def test_healthy_idle_connection_is_handed_out_without_a_round_trip(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 2, dsn, idle_timeout=None)
    conn = p.getconn()
    pid = backend_pid(conn)
    p.putconn(conn)
    before = backend_state(pg_server, pid)
    assert before is not None
    assert p.getconn() is conn
    # No statement reached the server: the backend's last query and its timestamp are unchanged.
    assert backend_state(pg_server, pid) == before


# -- connections beyond minconn are reused (issue 563) -----------------------------------------


@both_pools
@pytest.mark.parametrize("idle_timeout", [None, 3600])
def test_connections_beyond_minconn_are_reused(
    pool_cls: type[Any],
    idle_timeout: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 1, 4, dsn, idle_timeout=idle_timeout)
    conns = [p.getconn() for _ in range(4)]
    pids = {backend_pid(c) for c in conns}
    for c in conns:
        p.putconn(c)
    assert pg_server.count(app_name) == 4
    again = [p.getconn() for _ in range(4)]
    assert {backend_pid(c) for c in again} == pids
    assert {id(c) for c in again} == {id(c) for c in conns}


# -- putconn(conn, key=wrong) raises PoolError before touching anything -----------------------


@both_pools
@pytest.mark.parametrize("wrong", ["b", "zzz", 0, 2])
def test_wrong_key_is_refused_and_nothing_touched(
    pool_cls: type[Any],
    wrong: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 0, 3, dsn, idle_timeout=None)
    a = p.getconn("a")
    b = p.getconn("b")
    pid_a = backend_pid(a)  # leaves a INTRANS
    with a.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t_wrong_key (x int)")
    with pytest.raises(pool.PoolError) as info:
        p.putconn(a, key=wrong)
    assert not isinstance(info.value, KeyError)
    # a is untouched: open, still in its transaction, still checked out under "a".
    assert not a.closed
    assert a.info.transaction_status == INTRANS
    assert backend_state(pg_server, pid_a)[0] == "idle in transaction"
    assert p.getconn("a") is a
    assert p.getconn("b") is b
    assert pg_server.count(app_name) == 2
    # And the right key still works.
    p.putconn(a, key="a")
    assert a.info.transaction_status == IDLE
    p.putconn(b, key="b")
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(b, key="b")


# -- a second putconn of the same connection is refused ----------------------------------------


@both_pools
@pytest.mark.parametrize("idle_timeout", [0, None, 60])
def test_double_putconn_refused_and_never_lent_twice(
    pool_cls: type[Any],
    idle_timeout: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 2, 3, dsn, idle_timeout=idle_timeout)
    c = p.getconn()
    p.putconn(c)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(c)
    x, y = p.getconn(), p.getconn()
    assert x is not y
    assert backend_pid(x) != backend_pid(y)
    z = p.getconn()
    assert len({id(x), id(y), id(z)}) == 3
    assert len({backend_pid(x), backend_pid(y), backend_pid(z)}) == 3


# -- autocommit connection inside an explicit BEGIN is really rolled back ----------------------


class AutocommitConnection(psycopg2.extensions.connection):
    """Opened in autocommit mode: the state the pool must restore is autocommit=True."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.autocommit = True


@both_pools
@pytest.mark.parametrize("opened_autocommit", [False, True])
def test_autocommit_begin_is_rolled_back(
    pool_cls: type[Any],
    opened_autocommit: bool,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    kwargs = {"connection_factory": AutocommitConnection} if opened_autocommit else {}
    p = make_pool(pool_cls, 1, 2, dsn, **kwargs)
    conn = p.getconn()
    conn.autocommit = True
    pid = backend_pid(conn)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("CREATE TEMP TABLE t_begin (x int)")
    assert conn.info.transaction_status == INTRANS
    assert backend_state(pg_server, pid)[0] == "idle in transaction"
    p.putconn(conn)
    assert conn.info.transaction_status == IDLE
    assert backend_state(pg_server, pid)[0] == "idle"
    again = p.getconn()
    assert again is conn
    assert again.autocommit is opened_autocommit
    with again.cursor() as cur:
        cur.execute("SELECT to_regclass('pg_temp.t_begin')")
        assert cur.fetchone()[0] is None


# -- session attributes are restored to the values the connection had when opened --------------

_DEFAULTS = {
    "transaction_isolation": "read committed",
    "transaction_read_only": "off",
    "transaction_deferrable": "off",
    "default_transaction_isolation": "read committed",
    "default_transaction_read_only": "off",
    "default_transaction_deferrable": "off",
}


def _borrow_set_session_in_transaction(conn: Any) -> None:
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True)
    assert show(conn, "transaction_read_only") == "on"
    conn.rollback()


def _borrow_set_session_in_autocommit(conn: Any) -> None:
    # psycopg2 sends these as SET default_transaction_* in autocommit mode: server-side state.
    conn.autocommit = True
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True)
    assert show(conn, "default_transaction_read_only") == "on"


def _borrow_set_session_then_leave_autocommit(conn: Any) -> None:
    _borrow_set_session_in_autocommit(conn)
    conn.autocommit = False


def _borrow_attributes_one_by_one(conn: Any) -> None:
    conn.isolation_level = psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ
    conn.readonly = True
    conn.deferrable = True
    assert show(conn, "transaction_isolation") == "repeatable read"
    assert show(conn, "transaction_read_only") == "on"
    conn.rollback()
    conn.autocommit = True


def _borrow_autocommit_only(conn: Any) -> None:
    conn.autocommit = True


BORROWERS = [
    _borrow_set_session_in_transaction,
    _borrow_set_session_in_autocommit,
    _borrow_set_session_then_leave_autocommit,
    _borrow_attributes_one_by_one,
    _borrow_autocommit_only,
]


@both_pools
@pytest.mark.parametrize("borrower", BORROWERS, ids=[b.__name__[8:] for b in BORROWERS])
def test_session_attributes_do_not_leak(
    pool_cls: type[Any],
    borrower: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 1, 1, dsn)
    conn = p.getconn()
    pid = backend_pid(conn)
    conn.rollback()
    opened = (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)
    borrower(conn)
    p.putconn(conn)

    nxt = p.getconn()
    assert nxt is conn
    assert backend_pid(nxt) == pid
    nxt.rollback()
    assert (nxt.autocommit, nxt.isolation_level, nxt.readonly, nxt.deferrable) == opened
    # Server side: a new transaction has the defaults back...
    for setting, expected in _DEFAULTS.items():
        assert show(nxt, setting) == expected, setting
    # ... autocommit is off again (the SELECTs above opened a transaction) ...
    assert nxt.info.transaction_status == INTRANS
    # ... and the session can write.
    with nxt.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t_rw (x int)")
        cur.execute("INSERT INTO t_rw VALUES (1)")
    nxt.rollback()


@both_pools
def test_session_restored_to_state_at_open_not_library_defaults(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 1, dsn, connection_factory=AutocommitConnection)
    conn = p.getconn()
    assert conn.autocommit is True
    conn.autocommit = False
    conn.set_session(readonly=True)
    select_one(conn)
    p.putconn(conn)
    nxt = p.getconn()
    assert nxt is conn
    assert nxt.autocommit is True
    assert nxt.readonly is None
    select_one(nxt)
    # autocommit for real: the statement did not leave a transaction open.
    assert nxt.info.transaction_status == IDLE
    assert show(nxt, "transaction_read_only") == "off"


# -- ThreadedConnectionPool connects outside its lock ------------------------------------------


class GatedConnection(psycopg2.extensions.connection):
    """Connecting blocks on ``gate`` while ``armed``: a slow server, controlled by the test."""

    armed = False
    gate: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if cls.armed:
            cls.entered.set()
            cls.gate.wait(30)
        super().__init__(*args, **kwargs)


def test_threaded_pool_connects_outside_its_lock(
    pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    gated = type(
        "Gated",
        (GatedConnection,),
        {"armed": False, "gate": threading.Event(), "entered": threading.Event()},
    )
    p = make_pool(
        pool.ThreadedConnectionPool, 1, 3, dsn, idle_timeout=None, connection_factory=gated
    )
    warm = p.getconn()
    gated.armed = True
    slow_result: list[Any] = []
    slow = threading.Thread(target=lambda: slow_result.append(p.getconn()), daemon=True)
    slow.start()
    try:
        assert gated.entered.wait(10), "the slow connect never started"
        gated.armed = False  # only that one connect is slow
        # While that thread is connecting, other threads use the pool freely.
        fast_result: list[Any] = []

        def fast() -> None:
            p.putconn(warm)
            c = p.getconn()
            fast_result.append(c)
            fast_result.append(select_one(c))
            # The bound counts the connection being opened: 1 lent + 1 opening + 1 more = 3.
            fast_result.append(p.getconn())
            try:
                p.getconn()
            except pool.PoolError as exc:
                fast_result.append(str(exc))

        t = threading.Thread(target=fast, daemon=True)
        t.start()
        t.join(10)
        assert not t.is_alive(), "getconn/putconn waited for another thread's connect"
        assert fast_result[0] is warm
        assert fast_result[1] == 1
        assert fast_result[3] == EXHAUSTED
        assert slow.is_alive()
    finally:
        gated.gate.set()
    slow.join(10)
    assert not slow.is_alive()
    assert select_one(slow_result[0]) == 1
    assert pg_server.count(app_name) == 3


# -- generated keys skip keys that are checked out ---------------------------------------------


@both_pools
@pytest.mark.parametrize("user_key", [1, 2, 3])
def test_generated_key_skips_a_checked_out_user_key(
    pool_cls: type[Any],
    user_key: int,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 0, 5, dsn)
    mine = p.getconn(user_key)
    generated = [p.getconn() for _ in range(3)]
    assert all(c is not mine for c in generated)
    assert len({id(c) for c in generated}) == 3
    pids = {backend_pid(c) for c in generated}
    assert backend_pid(mine) not in pids
    assert p.getconn(user_key) is mine
    assert pg_server.count(app_name) == 4
    # Every connection comes back under its own key.
    p.putconn(mine, key=user_key)
    for c in generated:
        p.putconn(c)
