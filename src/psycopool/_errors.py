"""The exception hierarchy shared by every psycopool front door.

Every error the pool raises itself is a :class:`PoolError`. The modern pool
raises its errors as subclasses that also derive from the driver's
``OperationalError`` (psycopg2's or psycopg's), as psycopg_pool does: code
that catches the driver's errors keeps working, and ``except
psycopool.PoolTimeout`` works whatever the driver.
"""

from __future__ import annotations

import threading


class PoolError(Exception):
    """Base class of every error raised by psycopool itself (not by the driver)."""


class PoolTimeout(PoolError):
    """No connection could be had within the timeout."""


class PoolClosed(PoolError):
    """The pool is closed, or not open yet."""


class TooManyRequests(PoolError):
    """``max_waiting`` borrowers are already queued."""


_flavours: dict[tuple[type[PoolError], type[Exception]], type[PoolError]] = {}
_flavours_lock = threading.Lock()


def flavoured(cls: type[PoolError], driver_error: type[Exception]) -> type[PoolError]:
    """``cls``, also deriving from ``driver_error`` (made once per pair)."""
    key = (cls, driver_error)
    sub = _flavours.get(key)
    if sub is None:
        with _flavours_lock:
            sub = _flavours.get(key)
            if sub is None:
                namespace = {"__module__": "psycopool", "__doc__": cls.__doc__}
                sub = type(cls.__name__, (cls, driver_error), namespace)
                _flavours[key] = sub
    return sub
