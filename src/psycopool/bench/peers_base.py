"""The peer interface every adapter implements, and the application_name its connections carry."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

__all__ = ["APP_PREFIX", "Exhausted", "Peer", "app_name", "dsn_for"]

APP_PREFIX = "psycopool-bench-"

# How long a waiting pool may block before the bench calls it stuck (seconds).
_GET_TIMEOUT = 120.0


def app_name(key: str) -> str:
    """The ``application_name`` of a peer's connections."""
    return APP_PREFIX + key


def dsn_for(dsn: str, key: str) -> str:
    """``dsn`` (key=value or URI) with the peer's ``application_name``; a key=value string."""
    from psycopg2.extensions import make_dsn

    result: str = make_dsn(dsn, application_name=app_name(key))
    return result


class Exhausted(Exception):
    """Raised by the non-waiting floor when every connection is lent."""


class Peer:
    """One pool under test. Subclasses set the class attributes and implement open/get/put/close."""

    #: Short name: ``--peers`` selects by it; the application_name ends with it.
    key: ClassVar[str] = ""
    #: Row label in the tables.
    label: ClassVar[str] = ""
    #: Modules that must import for this peer to run.
    modules: ClassVar[tuple[str, ...]] = ()
    #: Runs only when named in --peers (variants that measure one feature's cost).
    opt_in: ClassVar[bool] = False
    #: Distributions whose versions the report shows.
    distributions: ClassVar[tuple[str, ...]] = ()
    #: What to install when the modules are missing.
    install_hint: ClassVar[str] = "pip install 'psycopool[bench]'"
    #: True if ``get`` raises at once when every connection is lent (retried after 100 µs).
    raises_when_exhausted: ClassVar[bool] = False
    #: True if the row borrows with ``with peer.connection() as conn`` instead of get/put.
    uses_context: ClassVar[bool] = False
    #: The driver the pool's connections use.
    driver: ClassVar[str] = "psycopg2"
    #: psycopool's own rows, and the drop-in's psycopg2 comparisons (see report.reference_for).
    is_psycopool: ClassVar[bool] = False
    compares_to_drop_in: ClassVar[bool] = False
    #: An asyncio pool (bench/peers_async.py): run by the async workloads only.
    is_async: ClassVar[bool] = False

    def __init__(self) -> None:
        self.pool: Any = None

    # -- availability --------------------------------------------------------------------------

    @classmethod
    def missing(cls) -> str | None:
        """Why this peer can't run here (a library is not installed), or None."""
        for module in cls.modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{module} is not installed ({exc}); {cls.install_hint}"
        return None

    # -- the interface -------------------------------------------------------------------------

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        """Create the pool; ``dsn`` already carries this peer's application_name."""
        raise NotImplementedError

    def get(self) -> Any:
        """Borrow a connection (waiting, or raising if ``raises_when_exhausted``)."""
        raise NotImplementedError

    def put(self, conn: Any, close: bool = False) -> None:
        """Return a connection; ``close=True`` discards it (after an error)."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the pool and every connection it holds."""
        raise NotImplementedError

    def is_exhausted(self, exc: BaseException) -> bool:
        """Is ``exc`` the pool's "exhausted" error (retry) rather than a real failure?"""
        return False

    @contextlib.contextmanager
    def _get_put(self) -> Iterator[Any]:
        conn = self.get()
        try:
            yield conn
        except BaseException:
            self.put(conn, close=True)
            raise
        self.put(conn)

    def connection(self) -> AbstractContextManager[Any]:
        """``with peer.connection() as conn``: the pool's own form if it has one, else get/put."""
        return self._get_put()
