"""Issue 13, bugs 4 and 5: no password in any message, and strict argument checks.

On both front doors (``psycopool.ConnectionPool`` on both drivers, and the
``psycopool.pool`` drop-in): a conninfo passed where a number or a mapping is
expected is never echoed with its password; a password with an unquoted
space, which libpq rejects quoting a fragment of it, never shows in the
error, the backoff warnings or a PoolTimeout; sizes, counts and durations
that can't work are refused at once, naming the argument and the value.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

import psycopg
import psycopg2
import pytest
from _dropin import both_pools

from psycopool import ConnectionPool, PoolClosed, PoolTimeout, pool
from psycopool._drivers import hide_password

DRIVERS = ["psycopg2", "psycopg"]
SECRET = "s3cr3t-Pa55"
#: A password with an unquoted space: libpq stops at the space and complains
#: about the rest ("missing "=" after "Fr4gment"").
SPACED = "Wh0le Fr4gment"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dsn_with_password(password: str = SECRET) -> str:
    return f"host=127.0.0.1 port={_free_port()} user=nobody password={password} connect_timeout=2"


def _assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets or (SECRET,):
        for word in secret.split():
            assert word not in text, (word, text)


# -- hide_password --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("host=x password=s3cr3t-Pa55 user=y", SECRET),
        ("host=x password = 's3cr3t-Pa55' user=y", SECRET),
        ("host=x password=Wh0le Fr4gment user=y", SPACED),
        ("host=x password=Wh0le Fr4gment", SPACED),
        ("host=x password='Wh0le Fr4gment", SPACED),  # unterminated quote
        ("host=x sslpassword=s3cr3t-Pa55", SECRET),
        ("postgresql://me:s3cr3t-Pa55@db/app", SECRET),
        ("postgresql://me:Wh0le Fr4gment@db/app", SPACED),
        ("[('password', 's3cr3t-Pa55')]", SECRET),
        ("{'host': 'x', 'password': 's3cr3t-Pa55'}", SECRET),
        ('{"PASSWORD": "s3cr3t-Pa55"}', SECRET),
    ],
)
def test_hide_password_masks_every_form(text: str, secret: str) -> None:
    masked = hide_password(text)
    assert "***" in masked
    _assert_hidden(masked, secret)


def test_hide_password_keeps_the_rest() -> None:
    assert hide_password("host=x password=Wh0le Fr4gment user=y port=5") == (
        "host=x password=*** user=y port=5"
    )
    assert hide_password("mypassword=kept") == "mypassword=kept"


# -- conninfo where a number or a mapping is expected -----------------------------------------


@both_pools
def test_dropin_conninfo_as_minconn_or_maxconn_is_masked(pool_cls: type[Any]) -> None:
    dsn = _dsn_with_password()
    with pytest.raises(ValueError) as info:
        pool_cls(dsn, 1, 5)
    assert "minconn" in str(info.value) and "***" in str(info.value)
    _assert_hidden(str(info.value))
    with pytest.raises(ValueError) as info:
        pool_cls(1, dsn)
    assert "maxconn" in str(info.value)
    _assert_hidden(str(info.value))


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("argument", ["min_size", "max_size", "timeout", "max_waiting", "kwargs"])
def test_modern_conninfo_as_another_argument_is_masked(driver: str, argument: str) -> None:
    dsn = _dsn_with_password()
    with pytest.raises((TypeError, ValueError)) as info:
        ConnectionPool(dsn, open=False, driver=driver, **{argument: dsn})
    assert argument in str(info.value)
    _assert_hidden(str(info.value))


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("kwargs", [[("password", SECRET)], (("password", SECRET),)])
def test_modern_kwargs_pairs_are_masked(driver: str, kwargs: Any) -> None:
    with pytest.raises(TypeError) as info:
        ConnectionPool("", kwargs=kwargs, open=False, driver=driver)
    assert "kwargs" in str(info.value)
    _assert_hidden(str(info.value))


# -- a password with an unquoted space: libpq quotes a fragment -------------------------------


@both_pools
def test_dropin_invalid_dsn_error_hides_the_fragment(
    pool_cls: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    dsn = _dsn_with_password(SPACED)
    with pytest.raises(psycopg2.ProgrammingError) as info:
        pool_cls(1, 2, dsn)
    text = str(info.value)
    assert "invalid dsn" in text  # still says what is wrong
    _assert_hidden(text, SPACED)
    assert info.value.__context__ is None and info.value.__cause__ is None
    p = pool_cls(0, 2, dsn)  # nothing opened yet: getconn connects
    try:
        with pytest.raises(psycopg2.ProgrammingError) as info:
            p.getconn()
        _assert_hidden(str(info.value), SPACED)
        assert p._engine.size == 0
    finally:
        p.closeall()


@both_pools
def test_dropin_refill_warning_hides_the_fragment(
    pool_cls: type[Any], dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A pool that worked, then connections with a bad conninfo: _refill logs the error.
    p = pool_cls(1, 2, dsn, idle_timeout=None)
    try:
        p._args = (_dsn_with_password(SPACED),)
        conn = p.getconn()
        caplog.set_level(logging.WARNING, logger="psycopool")
        p.putconn(conn, close=True)  # below minconn: refill fails and logs
        assert caplog.records, "no warning logged"
        for record in caplog.records:
            _assert_hidden(record.getMessage(), SPACED)
    finally:
        p.closeall()


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_backoff_warnings_and_timeout_hide_the_fragment(
    driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="psycopool")
    with ConnectionPool(_dsn_with_password(SPACED), min_size=1, driver=driver) as p:
        with pytest.raises(PoolTimeout) as info:
            p.getconn(timeout=0.5)
        assert "last connection attempt failed" in str(info.value)
        _assert_hidden(str(info.value), SPACED)
    warnings = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert warnings, "no backoff warning logged"
    for message in warnings:
        _assert_hidden(message, SPACED)


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_connect_error_is_masked_and_unchained(driver: str) -> None:
    from psycopool._drivers import get_driver

    d = get_driver(driver)
    with pytest.raises(d.Error) as info:
        d.connect(_dsn_with_password(SPACED), {})
    _assert_hidden(str(info.value), SPACED)
    assert isinstance(info.value, (psycopg2.ProgrammingError, psycopg.ProgrammingError))
    assert info.value.__context__ is None
    # A URL with a bad percent-encoding in its password: libpq quotes the password.
    with pytest.raises(d.Error) as info:
        d.connect(f"postgresql://me:{SECRET}%zz@127.0.0.1:{_free_port()}/db", {})
    _assert_hidden(str(info.value), SECRET)


# -- loose argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"min_size": 10**20}, ValueError, ["min_size", str(10**20)]),
        ({"min_size": 1, "max_size": 10**20}, ValueError, ["max_size", str(10**20)]),
        ({"max_waiting": True}, TypeError, ["max_waiting", "True"]),
        ({"max_waiting": "3"}, TypeError, ["max_waiting", "'3'"]),
        ({"max_waiting": float("inf")}, TypeError, ["max_waiting", "inf"]),
        ({"max_waiting": 2.0}, TypeError, ["max_waiting", "2.0"]),
        ({"timeout": float("inf")}, ValueError, ["timeout", "inf"]),
        ({"timeout": 1e10}, ValueError, ["timeout", "10000000000.0"]),
        ({"timeout": 10**400}, ValueError, ["timeout"]),
        ({"timeout": float("nan")}, ValueError, ["timeout", "nan"]),
        ({"max_idle": float("inf")}, ValueError, ["max_idle", "inf", "None"]),
        ({"max_lifetime": 1e300}, ValueError, ["max_lifetime"]),
    ],
)
def test_modern_loose_arguments_are_refused(
    driver: str, kwargs: dict[str, Any], exc: type[Exception], words: list[str]
) -> None:
    with pytest.raises(exc) as info:
        ConnectionPool("", open=False, driver=driver, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_bad_waits_are_refused_before_waiting(
    driver: str, dsn: str, pg_server: Any, app_name: str
) -> None:
    with ConnectionPool(dsn, min_size=1, max_size=1, driver=driver) as p:
        p.wait(timeout=10)
        held = p.getconn()  # the next getconn would have to wait
        try:
            for bad in (float("inf"), 1e10, float("nan"), 0.0, -1.0):
                with pytest.raises(ValueError, match="timeout"):
                    p.getconn(timeout=bad)
                with pytest.raises(ValueError, match="timeout"):
                    p.wait(timeout=bad)
            with pytest.raises(ValueError, match="timeout"):
                p.close(timeout=float("inf"))
            assert not p.closed
            stats = p.stats()
            assert stats["requests_waiting"] == 0 and stats["connections_in_use"] == 1
        finally:
            p.putconn(held)
    assert pg_server.wait_count(app_name, 0) == 0


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("sizes", [(10**20, None), (1, 10**20), (2, 2**18)])
def test_modern_resize_refuses_impossible_sizes(driver: str, dsn: str, sizes: Any) -> None:
    with ConnectionPool(dsn, min_size=0, max_size=2, driver=driver) as p:
        with pytest.raises(ValueError, match="size"):
            p.resize(*sizes)
        assert p.max_size == 2 and p.min_size == 0


@pytest.mark.parametrize("driver", DRIVERS)
def test_modern_wait_before_open_fails_at_once(driver: str, dsn: str) -> None:
    p = ConnectionPool(dsn, min_size=1, driver=driver, open=False)
    started = time.monotonic()
    with pytest.raises(PoolClosed, match="open"):
        p.wait(timeout=5)
    assert time.monotonic() - started < 2.5  # not the whole timeout
    p.close()


@both_pools
@pytest.mark.parametrize(
    ("minconn", "maxconn", "exc", "words"),
    [
        (10**20, 10**20, ValueError, ["minconn", str(10**20)]),
        (1, float("inf"), OverflowError, ["maxconn", "inf"]),
        (float("inf"), 2, OverflowError, ["minconn", "inf"]),
        (float("nan"), 2, ValueError, ["minconn", "nan"]),
    ],
)
def test_dropin_impossible_counts_are_refused(
    pool_cls: type[Any],
    minconn: Any,
    maxconn: Any,
    exc: type[Exception],
    words: list[str],
    pg_server: Any,
    app_name: str,
    dsn: str,
) -> None:
    with pytest.raises(exc) as info:
        pool_cls(minconn, maxconn, dsn)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert pg_server.count(app_name) == 0


@both_pools
@pytest.mark.parametrize("idle_timeout", [float("inf"), 1e10])
def test_dropin_impossible_idle_timeout_is_refused(
    pool_cls: type[Any], idle_timeout: float, dsn: str
) -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        pool_cls(1, 2, dsn, idle_timeout=idle_timeout)


@both_pools
def test_dropin_keeps_psycopg2_int_conversions(pool_cls: type[Any], dsn: str) -> None:
    """psycopg2.pool passes minconn/maxconn through int(): "3", 2.9 and a huge maxconn work."""
    p = pool_cls("1", 2.9, dsn)
    try:
        assert (p.minconn, p.maxconn) == (1, 2)
    finally:
        p.closeall()
    p = pool_cls(0, 2**63, dsn)
    try:
        p.putconn(p.getconn())
    finally:
        p.closeall()


def test_pool_module_exports_unchanged() -> None:
    assert pool.__all__ == [
        "AbstractConnectionPool",
        "PoolError",
        "SimpleConnectionPool",
        "ThreadedConnectionPool",
    ]
