"""Bad constructor arguments: each raises at once, naming the argument and the bad value."""

from __future__ import annotations

from typing import Any

import pytest
from _dropin import both_pools


@both_pools
@pytest.mark.parametrize(
    ("minconn", "maxconn", "exc", "needles"),
    [
        ("x", 2, ValueError, ["minconn", "'x'"]),
        (1, "y", ValueError, ["maxconn", "'y'"]),
        (1, None, TypeError, ["maxconn", "None"]),
        (None, 2, TypeError, ["minconn", "None"]),
        (1, [2], TypeError, ["maxconn", "[2]"]),
        (-1, 2, ValueError, ["minconn", "-1"]),
        (0, -3, ValueError, ["maxconn", "-3"]),
        (-2, -1, ValueError, ["minconn", "-2"]),
        (5, 2, ValueError, ["minconn", "maxconn", "5", "2"]),
        ("7", "3", ValueError, ["minconn", "maxconn", "7", "3"]),
        (1, 0, ValueError, ["minconn", "maxconn", "1", "0"]),
    ],
)
def test_bad_counts(
    pool_cls: type[Any],
    minconn: Any,
    maxconn: Any,
    exc: type[Exception],
    needles: list[str],
    pg_server: Any,
    app_name: str,
    dsn: str,
) -> None:
    with pytest.raises(exc) as info:
        pool_cls(minconn, maxconn, dsn)
    message = str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert pg_server.count(app_name) == 0


@both_pools
@pytest.mark.parametrize(
    ("idle_timeout", "exc", "needle"),
    [
        (-1, ValueError, "-1"),
        (-0.5, ValueError, "-0.5"),
        ("a", TypeError, "'a'"),
        ("10", TypeError, "'10'"),
        (float("nan"), ValueError, "nan"),
    ],
)
def test_bad_idle_timeout(
    pool_cls: type[Any],
    idle_timeout: Any,
    exc: type[Exception],
    needle: str,
    pg_server: Any,
    app_name: str,
    dsn: str,
) -> None:
    with pytest.raises(exc) as info:
        pool_cls(1, 2, dsn, idle_timeout=idle_timeout)
    message = str(info.value)
    assert "idle_timeout" in message
    assert needle in message
    # Rejected before any connection was opened (or every opened one was closed).
    assert pg_server.wait_count(app_name, 0) == 0


@both_pools
@pytest.mark.parametrize("idle_timeout", [0, 0.0, None, 1, 2.5])
def test_good_idle_timeout(
    pool_cls: type[Any], idle_timeout: Any, pg_server: Any, app_name: str, dsn: str
) -> None:
    p = pool_cls(1, 2, dsn, idle_timeout=idle_timeout)
    try:
        assert pg_server.count(app_name) == 1
    finally:
        p.closeall()
    assert pg_server.wait_count(app_name, 0) == 0
