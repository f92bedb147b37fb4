"""The psycopg2.pool contract that psycopool.pool keeps (COMPAT.md "Names", "Keep exactly")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from _dropin import POOL_CLASSES, PoolFactory, backend_pid, backend_state, both_pools, select_one

import psycopool
from psycopool import pool

EXHAUSTED = "connection pool exhausted"
UNKEYED = "trying to put unkeyed connection"
CLOSED = "connection pool is closed"


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    factory = PoolFactory()
    yield factory
    factory.close()


class CountingConnection(psycopg2.extensions.connection):
    """A real psycopg2 connection that records the calls the pool makes on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rollbacks = 0
        self.force_unknown = False

    def rollback(self) -> None:
        self.rollbacks += 1
        super().rollback()

    def get_transaction_status(self) -> int:
        if self.force_unknown:
            return psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
        return int(super().get_transaction_status())


# -- Names -----------------------------------------------------------------------------------


def test_pool_error_is_a_psycopg2_error_and_a_psycopool_error() -> None:
    assert issubclass(pool.PoolError, psycopg2.Error)
    assert issubclass(pool.PoolError, psycopool.PoolError)


def test_public_names() -> None:
    for name in (
        "PoolError",
        "AbstractConnectionPool",
        "SimpleConnectionPool",
        "ThreadedConnectionPool",
    ):
        assert hasattr(pool, name), name
    assert issubclass(pool.SimpleConnectionPool, pool.AbstractConnectionPool)
    assert issubclass(pool.ThreadedConnectionPool, pool.AbstractConnectionPool)


def test_abstract_pool_has_no_public_methods() -> None:
    for name in ("getconn", "putconn", "closeall", "prune"):
        assert not hasattr(pool.AbstractConnectionPool, name), name
        for cls in POOL_CLASSES:
            assert callable(getattr(cls, name)), (cls, name)


@both_pools
def test_public_attributes(pool_cls: type[Any], dsn: str, make_pool: PoolFactory) -> None:
    p = make_pool(pool_cls, 1, 3, dsn)
    assert (p.minconn, p.maxconn, p.closed) == (1, 3, False)
    p.closeall()
    assert p.closed is True


# -- 1. minconn opened at once, arguments passed through ----------------------------------------


@both_pools
def test_minconn_connections_opened_at_construction(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    make_pool(pool_cls, 2, 5, dsn)
    assert pg_server.count(app_name) == 2


@both_pools
def test_minconn_zero_opens_nothing(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 5, dsn)
    assert pg_server.count(app_name) == 0
    conn = p.getconn()
    assert select_one(conn) == 1
    assert pg_server.count(app_name) == 1


@both_pools
def test_keyword_arguments_reach_every_connect(
    pool_cls: type[Any], pg_server: Any, app_name: str, make_pool: PoolFactory
) -> None:
    p = make_pool(
        pool_cls,
        1,
        3,
        pg_server.dsn,
        application_name=app_name,
        options="-c work_mem=1234kB",
        connection_factory=CountingConnection,
    )
    conns = [p.getconn() for _ in range(3)]  # one from construction, two opened later
    assert pg_server.count(app_name) == 3
    for conn in conns:
        assert isinstance(conn, CountingConnection)
        with conn.cursor() as cur:
            cur.execute("SHOW work_mem")
            assert cur.fetchone()[0] == "1234kB"


@both_pools
def test_extra_positional_arguments_reach_connect(
    pool_cls: type[Any], dsn: str, make_pool: PoolFactory
) -> None:
    # psycopg2.connect(dsn, connection_factory, cursor_factory)
    p = make_pool(pool_cls, 1, 2, dsn, CountingConnection)
    a, b = p.getconn(), p.getconn()
    assert isinstance(a, CountingConnection)
    assert isinstance(b, CountingConnection)


@both_pools
def test_idle_timeout_is_consumed_not_passed_to_connect(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    # psycopg2.connect(dsn, idle_timeout=...) would fail: "invalid dsn: invalid connection option"
    p = make_pool(pool_cls, 1, 3, dsn, idle_timeout=None)
    conns = [p.getconn() for _ in range(3)]
    assert [select_one(c) for c in conns] == [1, 1, 1]
    assert pg_server.count(app_name) == 3


@both_pools
def test_bad_connection_option_raises_driver_error_at_construction(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str
) -> None:
    with pytest.raises(psycopg2.Error) as info:
        pool_cls(1, 2, dsn + " no_such_option=1")
    assert not isinstance(info.value, pool.PoolError)
    assert "no_such_option" in str(info.value)
    assert pg_server.count(app_name) == 0


@both_pools
def test_bad_connection_option_with_minconn_zero_raises_on_getconn(
    pool_cls: type[Any], dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn + " no_such_option=1")
    with pytest.raises(psycopg2.Error) as info:
        p.getconn()
    assert not isinstance(info.value, pool.PoolError)
    # The failed connect gave its slot back: both slots still fail the same way, not "exhausted".
    for _ in range(3):
        with pytest.raises(psycopg2.ProgrammingError):
            p.getconn()


@both_pools
def test_failed_connect_in_constructor_closes_opened_connections(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str
) -> None:
    class FailThird(psycopg2.extensions.connection):
        made = 0

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            type(self).made += 1
            if type(self).made == 3:
                raise psycopg2.OperationalError("third connect fails")
            super().__init__(*args, **kwargs)

    with pytest.raises(psycopg2.OperationalError, match="third connect fails"):
        pool_cls(4, 5, dsn, connection_factory=FailThird)
    assert pg_server.wait_count(app_name, 0) == 0


# -- 2. int() on minconn and maxconn ---------------------------------------------------------


@both_pools
def test_minconn_maxconn_go_through_int(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, "3", 4.9, dsn)
    assert (p.minconn, p.maxconn) == (3, 4)
    assert type(p.minconn) is int and type(p.maxconn) is int
    assert pg_server.count(app_name) == 3
    conns = [p.getconn() for _ in range(4)]
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        p.getconn()
    assert len({id(c) for c in conns}) == 4
    assert pg_server.count(app_name) == 4


@both_pools
def test_float_minconn_truncates(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 2.9, "5", dsn)
    assert (p.minconn, p.maxconn) == (2, 5)
    assert pg_server.count(app_name) == 2


@both_pools
@pytest.mark.parametrize("which", ["minconn", "maxconn"])
def test_none_count_is_type_error(
    pool_cls: type[Any], which: str, pg_server: Any, app_name: str, dsn: str
) -> None:
    args = {"minconn": 1, "maxconn": 2, which: None}
    with pytest.raises(TypeError):
        pool_cls(args["minconn"], args["maxconn"], dsn)
    assert pg_server.count(app_name) == 0


# -- 3. keys ---------------------------------------------------------------------------------


@both_pools
def test_generated_keys_are_1_2_3(pool_cls: type[Any], dsn: str, make_pool: PoolFactory) -> None:
    p = make_pool(pool_cls, 0, 5, dsn)
    conns = [p.getconn() for _ in range(3)]
    for key, conn in enumerate(conns, start=1):
        assert p.getconn(key) is conn
    # putconn with the generated key is accepted, with another one refused.
    with pytest.raises(pool.PoolError):
        p.putconn(conns[0], key=2)
    p.putconn(conns[0], key=1)
    p.putconn(conns[1], key=2)
    p.putconn(conns[2], key=3)


@both_pools
def test_same_key_same_connection_one_slot_even_when_full(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn)
    a = p.getconn("a")
    b = p.getconn()
    assert a is not b
    # The pool is full: a new key is refused, a known key gets its connection back.
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        p.getconn("c")
    assert p.getconn("a") is a
    assert p.getconn("a") is a
    assert pg_server.count(app_name) == 2
    p.putconn(a, key="a")
    # One putconn returns it: the key took one slot, not three.
    c = p.getconn("c")
    assert select_one(c) == 1
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        p.getconn()


@both_pools
def test_key_zero_is_a_valid_key(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 3, dsn, idle_timeout=None)
    z = p.getconn(0)
    assert p.getconn(0) is z
    other = p.getconn()
    assert other is not z
    with pytest.raises(pool.PoolError):
        p.putconn(other, key=0)
    p.putconn(z, key=0)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(z, key=0)
    assert pg_server.count(app_name) == 2


@both_pools
@pytest.mark.parametrize("bad_key", [[1], {"a": 1}, {1}])
def test_unhashable_key_is_type_error(
    pool_cls: type[Any],
    bad_key: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn)
    with pytest.raises(TypeError):
        p.getconn(bad_key)
    # Nothing was reserved: both slots are still there.
    a, b = p.getconn(), p.getconn()
    assert a is not b
    assert pg_server.count(app_name) == 2


# -- 4. LIFO ---------------------------------------------------------------------------------


@both_pools
@pytest.mark.parametrize("idle_timeout", [0, None, 60])
def test_idle_connections_are_handed_out_newest_first(
    pool_cls: type[Any], idle_timeout: Any, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 3, 3, dsn, idle_timeout=idle_timeout)
    a, b, c = p.getconn(), p.getconn(), p.getconn()
    pids = {id(x): backend_pid(x) for x in (a, b, c)}
    for conn in (b, c, a):
        p.putconn(conn)
    first, second, third = p.getconn(), p.getconn(), p.getconn()
    assert (first, second, third) == (a, c, b)
    assert [backend_pid(x) for x in (first, second, third)] == [
        pids[id(a)],
        pids[id(c)],
        pids[id(b)],
    ]


# -- 5. exhausted ----------------------------------------------------------------------------


@both_pools
@pytest.mark.parametrize("minconn", [0, 1, 3])
def test_exhausted_at_once(
    pool_cls: type[Any],
    minconn: int,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, minconn, 3, dsn, idle_timeout=None)
    conns = [p.getconn() for _ in range(3)]
    for _ in range(2):
        with pytest.raises(pool.PoolError) as info:
            p.getconn()
        assert str(info.value) == EXHAUSTED
        with pytest.raises(pool.PoolError, match=EXHAUSTED):
            p.getconn("new-key")
    assert pg_server.count(app_name) == 3
    p.putconn(conns[0])
    assert p.getconn() is conns[0]


@both_pools
def test_maxconn_zero_first_getconn_exhausted(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 0, dsn)
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        p.getconn()
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        p.getconn(0)
    assert pg_server.count(app_name) == 0


# -- 6. unkeyed putconn ----------------------------------------------------------------------


@both_pools
def test_putconn_foreign_connection(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 2, dsn)
    foreign = psycopg2.connect(dsn)
    try:
        foreign_pid = backend_pid(foreign)
        with pytest.raises(pool.PoolError) as info:
            p.putconn(foreign)
        assert str(info.value) == UNKEYED
        # Untouched: still open, still in its transaction, same session.
        assert not foreign.closed
        assert foreign.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        assert backend_pid(foreign) == foreign_pid
        assert pg_server.count(app_name) == 2
    finally:
        foreign.close()


@both_pools
@pytest.mark.parametrize("idle_timeout", [0, None])
def test_putconn_already_returned(
    pool_cls: type[Any],
    idle_timeout: Any,
    pg_server: Any,
    app_name: str,
    dsn: str,
    make_pool: PoolFactory,
) -> None:
    p = make_pool(pool_cls, 1, 3, dsn, idle_timeout=idle_timeout)
    conn = p.getconn()
    p.putconn(conn)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(conn)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(conn, close=True)
    # The pool kept it (minconn=1) and still lends it exactly once.
    assert not conn.closed
    assert p.getconn() is conn
    assert p.getconn() is not conn


@both_pools
def test_putconn_connection_of_another_pool(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p1 = make_pool(pool_cls, 0, 2, dsn)
    p2 = make_pool(pool_cls, 0, 2, dsn)
    theirs = p2.getconn()
    pid = backend_pid(theirs)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p1.putconn(theirs)
    assert not theirs.closed
    assert backend_pid(theirs) == pid
    # Still checked out of p2, under its key.
    assert p2.getconn(1) is theirs
    p2.putconn(theirs)
    with pytest.raises(pool.PoolError, match=EXHAUSTED):
        [p1.getconn() for _ in range(3)]


@both_pools
def test_putconn_without_connection(pool_cls: type[Any], dsn: str, make_pool: PoolFactory) -> None:
    p = make_pool(pool_cls, 1, 2, dsn)
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn()
    with pytest.raises(pool.PoolError, match=UNKEYED):
        p.putconn(None, key=1)


# -- 7. status on return ---------------------------------------------------------------------


@both_pools
def test_intrans_connection_is_rolled_back_and_kept(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 2, dsn)
    conn = p.getconn()
    pid = backend_pid(conn)
    with conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE t_intrans (x int)")
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    assert backend_state(pg_server, pid)[0] == "idle in transaction"
    p.putconn(conn)
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert backend_state(pg_server, pid)[0] == "idle"
    again = p.getconn()
    assert again is conn
    assert backend_pid(again) == pid
    with again.cursor() as cur:  # the CREATE was rolled back
        cur.execute("SELECT to_regclass('pg_temp.t_intrans')")
        assert cur.fetchone()[0] is None


@both_pools
def test_inerror_connection_is_rolled_back_and_kept(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 2, dsn)
    conn = p.getconn()
    pid = backend_pid(conn)
    with pytest.raises(psycopg2.Error), conn.cursor() as cur:
        cur.execute("SELECT 1/0")
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INERROR
    p.putconn(conn)
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert backend_state(pg_server, pid)[0] == "idle"
    again = p.getconn()
    assert again is conn
    assert select_one(again) == 1
    assert backend_pid(again) == pid


@both_pools
def test_unknown_status_connection_is_closed(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn, idle_timeout=None, connection_factory=CountingConnection)
    conn = p.getconn()
    pid = backend_pid(conn)
    conn.rollback()
    conn.force_unknown = True
    p.putconn(conn)
    assert conn.closed
    assert pg_server.wait_count(app_name, 0) == 0
    fresh = p.getconn()
    assert backend_pid(fresh) != pid


@both_pools
def test_closed_connection_is_dropped_silently(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn, idle_timeout=None)
    a, b = p.getconn(), p.getconn()
    a.close()
    p.putconn(a)  # no error
    assert pg_server.wait_count(app_name, 1) == 1
    # Its slot is free again and the closed one is never lent.
    c = p.getconn()
    assert c is not a
    assert select_one(c) == 1
    assert pg_server.count(app_name) == 2
    p.putconn(b)
    p.putconn(c)


# -- 8. close=True ---------------------------------------------------------------------------


@both_pools
def test_putconn_close_true_closes_without_rollback(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 0, 2, dsn, idle_timeout=None, connection_factory=CountingConnection)
    conn = p.getconn()
    pid = backend_pid(conn)
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
    p.putconn(conn, close=True)
    assert conn.closed
    assert conn.rollbacks == 0
    assert pg_server.wait_count(app_name, 0) == 0
    fresh = p.getconn()
    assert fresh is not conn
    assert backend_pid(fresh) != pid


# -- 9. closed pool --------------------------------------------------------------------------


@both_pools
def test_every_call_on_a_closed_pool_raises(
    pool_cls: type[Any], dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 1, 3, dsn)
    out = p.getconn()
    p.closeall()
    calls = [
        lambda: p.getconn(),
        lambda: p.getconn("k"),
        lambda: p.getconn(1),
        lambda: p.putconn(out),
        lambda: p.putconn(out, close=True),
        lambda: p.putconn(),
        lambda: p.prune(),
        lambda: p.closeall(),
    ]
    for call in calls:
        with pytest.raises(pool.PoolError) as info:
            call()
        assert str(info.value) == CLOSED


# -- 10. closeall ----------------------------------------------------------------------------


@both_pools
def test_closeall_closes_idle_and_checked_out(
    pool_cls: type[Any], pg_server: Any, app_name: str, dsn: str, make_pool: PoolFactory
) -> None:
    p = make_pool(pool_cls, 2, 5, dsn, idle_timeout=None)
    out = [p.getconn() for _ in range(4)]
    p.putconn(out.pop())
    assert pg_server.count(app_name) == 4
    p.closeall()
    assert p.closed is True
    assert all(c.closed for c in out)
    assert pg_server.wait_count(app_name, 0) == 0
    # Never reopens, not even to keep minconn.
    with pytest.raises(pool.PoolError, match=CLOSED):
        p.getconn()
    assert pg_server.count(app_name) == 0
    assert p.closed is True
