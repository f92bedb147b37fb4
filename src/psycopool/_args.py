"""Argument checks shared by the front doors: every message names the argument and its value.

A value is shown through :func:`show`, which masks passwords: a conninfo string
passed where a number is expected must not end up in a traceback or a log.
"""

from __future__ import annotations

import math
from typing import Any

from psycopool._drivers import hide_password

#: PostgreSQL's own ceiling on connections (MAX_BACKENDS, 2**18 - 1): a pool
#: can never hold more, so a larger size is a mistake, not a wish.
MAX_SIZE = 262_143
#: The longest duration accepted, in seconds (about 31 years). Waits past
#: ``threading.TIMEOUT_MAX`` (about 292 years) raise OverflowError inside
#: the standard library; "for ever" is spelled ``None`` where it makes sense.
MAX_SECONDS = 1e9


def null_sizes(min_size: Any, max_size: Any) -> tuple[int, Any]:
    """A null pool's sizes: ``min_size`` 0; ``max_size`` None or 0 is no bound (psycopg_pool's
    rule), kept as :data:`MAX_SIZE` and reported as 0 (see :func:`reported_max`)."""
    if min_size != 0 or isinstance(min_size, bool):
        raise ValueError(f"min_size must be 0 for a null pool; got min_size={show(min_size)}")
    if max_size is None or (max_size == 0 and not isinstance(max_size, bool)):
        max_size = MAX_SIZE
    return 0, max_size


def reported_max(max_size: int) -> int:
    """A null pool's ``max_size`` as psycopg_pool reports it: 0 when there is no bound."""
    return 0 if max_size == MAX_SIZE else max_size


def show(value: Any) -> str:
    """``repr(value)`` with any password masked, for error messages."""
    return hide_password(repr(value))


def as_count(name: str, value: Any, *, maximum: int = MAX_SIZE) -> int:
    """An ``int`` (not a bool, a float or a string) between 0 and ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer; got {show(value)}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value!r}")
    return value


def as_int_like(name: str, value: Any, *, maximum: int | None = MAX_SIZE) -> int:
    """``int(value)`` as psycopg2.pool does (``"3"`` -> 3, ``2.9`` -> 2), with a clear error."""
    try:
        count = int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise type(exc)(f"{name} must be an integer; got {show(value)}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0; got {show(value)}")
    if maximum is not None and count > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {show(value)}")
    return count


def check_sizes(min_size: Any, max_size: Any) -> tuple[int, int]:
    """``(min_size, max_size)`` of the modern pools; ``max_size=None`` means ``min_size``."""
    min_size = as_count("min_size", min_size)
    if max_size is None:
        max_size = min_size
    elif isinstance(max_size, bool) or not isinstance(max_size, int):
        raise TypeError(f"max_size must be an integer or None; got {show(max_size)}")
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1; got max_size={max_size!r}")
    if max_size > MAX_SIZE:
        raise ValueError(f"max_size must be <= {MAX_SIZE}; got max_size={max_size!r}")
    if max_size < min_size:
        raise ValueError(
            f"max_size must be >= min_size; got min_size={min_size!r}, max_size={max_size!r}"
        )
    return min_size, max_size


def as_seconds(
    name: str, value: Any, *, allow_none: bool = True, allow_zero: bool = True
) -> float | None:
    """Seconds: a finite number >= 0 (or > 0), at most MAX_SECONDS; or None where allowed."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds; got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds; got {show(value)}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds; got {value!r}")
    if seconds > MAX_SECONDS:
        hint = " (None means never)" if allow_none else ""
        raise ValueError(f"{name} must be <= {MAX_SECONDS:.0f} seconds{hint}; got {value!r}")
    return seconds


def as_timeout(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """A wait in seconds: a finite number > 0 (or >= 0), at most MAX_SECONDS."""
    seconds = as_seconds(name, value, allow_none=False, allow_zero=allow_zero)
    assert seconds is not None
    return seconds
