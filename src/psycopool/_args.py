"""Argument checks shared by the front doors: every message names the argument and its value."""

from __future__ import annotations

import math
from typing import Any


def as_count(name: str, value: Any) -> int:
    """``int(value)`` as psycopg2.pool does (``"3"`` -> 3, ``2.9`` -> 2), with a clear error."""
    try:
        count = int(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name} must be an integer; got {value!r}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0; got {value!r}")
    return count


def as_seconds(
    name: str, value: Any, *, allow_none: bool = True, allow_zero: bool = True
) -> float | None:
    """A duration in seconds: a finite number >= 0 (or > 0), or None where allowed."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a number of seconds; got None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds; got {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds; got {value!r}")
    return seconds
