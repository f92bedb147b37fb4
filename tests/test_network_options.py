"""``network_timeout``: keepalives and tcp_user_timeout on every connection, read from the socket.

The options are checked where they take effect, on the connection's TCP socket (getsockopt), not
in what the pool passed: what matters is what libpq applied.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import psycopg2.extensions
import pytest
from _dropin import both_pools, safe_close
from _modern import pid_of

from psycopool import ConnectionPool, pool
from psycopool._network import DEFAULT_NETWORK_TIMEOUT, network_options

DRIVERS = ["psycopg2", "psycopg"]
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)


def sockopts(conn: Any) -> dict[str, int]:
    """The keepalive and user-timeout options of ``conn``'s socket."""
    fd = conn.fileno() if hasattr(conn, "fileno") else conn.pgconn.socket
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return {
            "keepalives": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "keepalives_idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "keepalives_interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "keepalives_count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "tcp_user_timeout": sock.getsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()


def os_keepalive_idle() -> int:
    with open("/proc/sys/net/ipv4/tcp_keepalive_time") as f:
        return int(f.read())


@pytest.mark.parametrize("seconds", [1, 2, 3, 10, 30, 0.5, 86400])
def test_options_end_near_the_timeout(seconds: float) -> None:
    options = network_options(seconds)
    assert options["tcp_user_timeout"] == max(1, round(seconds * 1000))
    assert options["keepalives"] == 1
    # Without tcp_user_timeout (not Linux), the probes alone end the connection near the bound.
    probes_end = (
        options["keepalives_idle"] + options["keepalives_interval"] * options["keepalives_count"]
    )
    assert seconds <= probes_end <= max(seconds, 1) * 1.5 + 1
    assert all(isinstance(v, int) and v >= 1 for v in options.values())


@pytest.mark.parametrize("driver", DRIVERS)
def test_default_is_on(driver: str, dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, driver=driver) as p:
        assert p.network_timeout == DEFAULT_NETWORK_TIMEOUT
        with p.connection() as conn:
            assert sockopts(conn) == network_options(DEFAULT_NETWORK_TIMEOUT)


@pytest.mark.parametrize("driver", DRIVERS)
def test_value_and_disabled(driver: str, dsn: str) -> None:
    with ConnectionPool(dsn, min_size=1, driver=driver, network_timeout=3) as p:
        with p.connection() as conn:
            assert sockopts(conn) == network_options(3)
    with ConnectionPool(dsn, min_size=1, driver=driver, network_timeout=None) as p:
        with p.connection() as conn:
            opts = sockopts(conn)
    # libpq's own defaults: keepalives on with the OS's timings, no user timeout.
    assert opts["tcp_user_timeout"] == 0
    assert opts["keepalives_idle"] == os_keepalive_idle()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("form", ["keywords", "uri", "kwargs"])
def test_never_overrides_the_user(driver: str, form: str, pg_server: Any, app_name: str) -> None:
    mine = {"tcp_user_timeout": 4321, "keepalives_idle": 77}
    base = psycopg2.extensions.parse_dsn(pg_server.dsn)
    base["application_name"] = app_name
    kwargs: dict[str, Any] = {}
    if form == "keywords":
        conninfo = psycopg2.extensions.make_dsn(**base, **mine)
    elif form == "uri":
        query = "&".join(f"{k}={v}" for k, v in {**mine, "application_name": app_name}.items())
        conninfo = f"postgresql://{base['user']}@{base['host']}:{base['port']}/postgres?{query}"
    else:
        conninfo, kwargs = psycopg2.extensions.make_dsn(**base), mine
    with ConnectionPool(conninfo, kwargs=kwargs, min_size=1, driver=driver) as p:
        with p.connection() as conn:
            opts = sockopts(conn)
            pid_of(conn)
        assert pg_server.count(app_name) == 1  # the URI really carried application_name
    expected = {**network_options(DEFAULT_NETWORK_TIMEOUT), **mine}
    assert opts == expected


@pytest.mark.parametrize("driver", DRIVERS)
def test_user_can_turn_keepalives_off(driver: str, dsn: str) -> None:
    with ConnectionPool(f"{dsn} keepalives=0", min_size=1, driver=driver) as p:
        with p.connection() as conn:
            opts = sockopts(conn)
    # libpq applies tcp_user_timeout only with keepalives on: keepalives=0 turns both off.
    assert opts["keepalives"] == 0
    assert opts["tcp_user_timeout"] == 0


@both_pools
def test_dropin_off_by_default_opt_in(pool_cls: type[Any], dsn: str) -> None:
    p = pool_cls(1, 2, dsn)
    try:
        conn = p.getconn()
        # psycopg2.pool passes its arguments unchanged to connect(): so does the drop-in.
        assert "tcp_user_timeout" not in conn.dsn
        assert sockopts(conn)["tcp_user_timeout"] == 0
        p.putconn(conn)
    finally:
        safe_close(p)
    p = pool_cls(1, 2, dsn, network_timeout=4)
    try:
        conn = p.getconn()
        assert sockopts(conn) == network_options(4)
        p.putconn(conn)
    finally:
        safe_close(p)
    p = pool_cls(1, 2, dsn=f"{dsn} tcp_user_timeout=999", network_timeout=4)
    try:
        conn = p.getconn()
        assert sockopts(conn) == {**network_options(4), "tcp_user_timeout": 999}
        p.putconn(conn)
    finally:
        safe_close(p)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (1e6, ValueError),
        ("10", TypeError),
        (True, TypeError),
    ],
)
def test_bad_values_are_refused(value: Any, error: type[Exception], dsn: str) -> None:
    with pytest.raises(error, match="network_timeout"):
        ConnectionPool(dsn, network_timeout=value, open=False)
    with pytest.raises(error, match="network_timeout"):
        pool.ThreadedConnectionPool(0, 1, dsn, network_timeout=value)


def test_async_pool_default_is_on(dsn: str) -> None:
    import asyncio

    from psycopool import AsyncConnectionPool

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        async with AsyncConnectionPool(dsn, min_size=1) as p:
            async with p.connection() as conn:
                default = sockopts(conn)
        async with AsyncConnectionPool(f"{dsn} tcp_user_timeout=999", network_timeout=3) as p:
            async with p.connection() as conn:
                mine = sockopts(conn)
        return default, mine

    default, mine = asyncio.run(main())
    assert default == network_options(DEFAULT_NETWORK_TIMEOUT)
    assert mine == {**network_options(3), "tcp_user_timeout": 999}


def _effective(conn: Any, key: str) -> str | None:
    """What libpq used for option ``key`` on ``conn`` (None if unset)."""
    if hasattr(conn, "get_dsn_parameters"):  # psycopg2
        value = conn.get_dsn_parameters().get(key)
        return None if value is None else str(value)
    return next((o.val.decode() for o in conn.pgconn.info if o.keyword.decode() == key), None)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("where", ["PGSERVICEFILE", "PGSYSCONFDIR"])
@pytest.mark.parametrize("named_by", ["conninfo", "PGSERVICE"])
def test_a_service_file_is_never_overridden(
    driver: str,
    where: str,
    named_by: str,
    pg_server: Any,
    app_name: str,
    tmp_path: Any,
    monkeypatch,
) -> None:
    """Options the connection's service sets are left to it; the others are still added."""
    base = psycopg2.extensions.parse_dsn(pg_server.dsn)
    lines = ["# a comment", "[other]", "tcp_user_timeout=1", "[psycopool_test] # the one"]
    lines += [f"{key}={base[key]}" for key in ("host", "port", "user") if key in base]
    lines += [f"application_name={app_name}", "dbname=postgres"]
    lines += ["  tcp_user_timeout=4321", "keepalives_idle=77", "connect_timeout=7", "[after]"]
    if where == "PGSERVICEFILE":
        path = tmp_path / "services.conf"
        monkeypatch.setenv("PGSERVICEFILE", str(path))
    else:
        path = tmp_path / "pg_service.conf"
        monkeypatch.delenv("PGSERVICEFILE", raising=False)  # set but missing: libpq's error
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pg_service.conf
        monkeypatch.setenv("PGSYSCONFDIR", str(tmp_path))
    path.write_text("\n".join(lines) + "\n")
    conninfo = "service=psycopool_test"
    if named_by == "PGSERVICE":
        monkeypatch.setenv("PGSERVICE", "psycopool_test")
        conninfo = ""
    with ConnectionPool(conninfo, min_size=1, driver=driver, timeout=10) as p:
        with p.connection() as conn:
            opts = sockopts(conn)
            timeout = _effective(conn, "connect_timeout")
        assert pg_server.count(app_name) == 1  # connected through the service
    mine = {"tcp_user_timeout": 4321, "keepalives_idle": 77}
    assert opts == {**network_options(DEFAULT_NETWORK_TIMEOUT), **mine}
    assert timeout == "7"


@pytest.mark.parametrize("driver", DRIVERS)
def test_pgconnect_timeout_is_never_overridden(driver: str, dsn: str, monkeypatch) -> None:
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "9")
    with ConnectionPool(dsn, min_size=1, driver=driver) as p:
        with p.connection() as conn:
            assert _effective(conn, "connect_timeout") == "9"
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    with ConnectionPool(dsn, min_size=1, driver=driver) as p:
        with p.connection() as conn:
            assert _effective(conn, "connect_timeout") != "9"  # psycopool's default
