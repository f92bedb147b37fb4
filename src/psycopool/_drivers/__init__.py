"""The only code that imports a database driver.

Everything the pool needs from psycopg2 or psycopg 3 goes through the small
:class:`Driver` interface, so the engine and the front doors never branch on
which driver is in use. The interface is in ``_interface.py``, the password masking in
``_masking.py``; this module picks a driver and imports its module only then.
"""

from __future__ import annotations

from typing import Any

from psycopool._drivers._interface import (
    ACTIVE,
    IDLE,
    INERROR,
    INTRANS,
    UNKNOWN,
    AsyncDriver,
    Driver,
    SessionState,
    SessionStateError,
)
from psycopool._drivers._masking import hide_password, masked_error

__all__ = [
    "ACTIVE",
    "IDLE",
    "INERROR",
    "INTRANS",
    "UNKNOWN",
    "AsyncDriver",
    "Driver",
    "SessionState",
    "SessionStateError",
    "get_async_driver",
    "get_driver",
    "hide_password",
    "masked_error",
]


_DRIVER_NAMES = ("psycopg2", "psycopg")


def get_driver(driver: Any) -> Driver:
    """The driver named ``driver`` ("psycopg2", "psycopg"), or the one owning a connection class.

    A connection class (a subclass of ``psycopg2.extensions.connection`` or of
    ``psycopg.Connection``) selects its driver and is used to connect.
    """
    if driver == "psycopg2":
        from psycopool._drivers._psycopg2 import Psycopg2Driver

        return Psycopg2Driver()
    if driver == "psycopg":
        from psycopool._drivers._psycopg import PsycopgDriver

        return PsycopgDriver()
    if isinstance(driver, type):
        for name in _DRIVER_NAMES:
            if not any(base.__module__.split(".")[0] == name for base in driver.__mro__):
                continue
            found = get_driver(name)
            if issubclass(driver, found.connection_class):
                found.connection_class = driver
                return found
    raise ValueError(
        f"driver must be one of {', '.join(map(repr, _DRIVER_NAMES))} or a connection class"
        f" of one of them; got {hide_password(repr(driver))}"
    )


def get_async_driver(driver: Any) -> AsyncDriver:
    """The async driver: "psycopg", or a subclass of ``psycopg.AsyncConnection`` to connect with.

    A parametrised generic (``MyConnection[MyRow]``) is accepted: checked as its origin
    class, and kept as given to connect with.
    """
    import typing

    cls = typing.get_origin(driver) or driver
    if driver == "psycopg" or isinstance(cls, type):
        from psycopool._drivers._psycopg_async import AsyncPsycopgDriver

        found = AsyncPsycopgDriver()
        if driver == "psycopg":
            return found
        if issubclass(cls, found.connection_class):
            found.connection_class = driver
            return found
    raise ValueError(
        "connection_class must be psycopg.AsyncConnection or a subclass of it; driver must be"
        f" 'psycopg'; got {hide_password(repr(driver))}"
    )
