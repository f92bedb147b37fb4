"""Peer adapters: every pool the bench compares, behind one small interface.

Adding a pool is one subclass of :class:`Peer` appended to :data:`PEERS`: say how to open it
(``min_size``, ``max_size``), how to borrow (:meth:`Peer.get`) and return (:meth:`Peer.put`),
whether it raises when exhausted instead of waiting, and (for ``with``-style rows) override
:meth:`Peer.connection` and set ``uses_context``. A peer whose library is missing is skipped with
the reason :meth:`Peer.missing` gives.

Every connection a peer opens carries ``application_name=psycopool-bench-<key>``, so the
server-side monitor can count each peer's connections in ``pg_stat_activity``.

The peer libraries are imported lazily, inside the adapters, and typed as ``Any``.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

__all__ = [
    "APP_PREFIX",
    "PEERS",
    "Peer",
    "app_name",
    "dsn_for",
    "peer_by_key",
]

APP_PREFIX = "psycopool-bench-"

# How long a waiting pool may block before the bench calls it stuck (seconds).
_GET_TIMEOUT = 120.0

# psycopg2's transaction status values (psycopg2.extensions), spelled out to keep imports lazy.
_PG2_IDLE = 0
_PG2_UNKNOWN = 4


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


def _has_modern_pool() -> bool:
    import psycopool

    return hasattr(psycopool, "ConnectionPool")


# -- psycopool ---------------------------------------------------------------------------------


class PsycopoolPeer(Peer):
    """psycopool.ConnectionPool, getconn/putconn (appears once the modern pool exists)."""

    key = "psycopool"
    label = "psycopool ConnectionPool"
    modules: ClassVar[tuple[str, ...]] = ("psycopg2",)
    distributions = ("psycopool",)
    is_psycopool = True

    @classmethod
    def missing(cls) -> str | None:
        if not _has_modern_pool():
            return "psycopool.ConnectionPool does not exist in this version yet"
        return super().missing()

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopool

        cls: Any = getattr(psycopool, "ConnectionPool")  # noqa: B009 (may not exist: mypy)
        self.pool = cls(dsn, min_size=min_size, max_size=max_size, open=True)
        wait = getattr(self.pool, "wait", None)
        if wait is not None:
            wait(timeout=60.0)

    def get(self) -> Any:
        return self.pool.getconn(timeout=_GET_TIMEOUT)

    def put(self, conn: Any, close: bool = False) -> None:
        if close:
            with contextlib.suppress(Exception):
                conn.close()
        self.pool.putconn(conn)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def connection(self) -> AbstractContextManager[Any]:
        cm: AbstractContextManager[Any] = self.pool.connection(timeout=_GET_TIMEOUT)
        return cm


class PsycopoolWithPeer(PsycopoolPeer):
    key = "psycopool-with"
    label = "psycopool ConnectionPool with"
    uses_context = True


class PsycopoolPsycopgPeer(PsycopoolPeer):
    """psycopool.ConnectionPool on psycopg 3: the same driver as psycopg_pool's rows."""

    key = "psycopool-pg3"
    label = "psycopool ConnectionPool (psycopg 3)"
    modules = ("psycopg",)
    driver = "psycopg"

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopool

        cls: Any = getattr(psycopool, "ConnectionPool")  # noqa: B009 (may not exist: mypy)
        self.pool = cls(dsn, min_size=min_size, max_size=max_size, driver="psycopg")
        self.pool.wait(timeout=60.0)


class PsycopoolPingPeer(PsycopoolPeer):
    """psycopool.ConnectionPool with check="ping": one round trip per borrow, on every path."""

    key = "psycopool-ping"
    label = "psycopool ConnectionPool check=ping"

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopool

        cls: Any = getattr(psycopool, "ConnectionPool")  # noqa: B009 (may not exist: mypy)
        self.pool = cls(dsn, min_size=min_size, max_size=max_size, check="ping")
        self.pool.wait(timeout=60.0)


class PsycopoolPrometheusPeer(PsycopoolPeer):
    """psycopool.ConnectionPool with the Prometheus collector attached: what metrics cost."""

    key = "psycopool-prom"
    label = "psycopool ConnectionPool + Prometheus"
    modules: ClassVar[tuple[str, ...]] = ("psycopg2", "prometheus_client")
    install_hint = "pip install 'psycopool[bench,prometheus]'"
    opt_in = True

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        from prometheus_client import CollectorRegistry

        from psycopool.metrics.prometheus import register

        super().open(dsn, min_size, max_size)
        self.registry = CollectorRegistry()
        register(self.pool, registry=self.registry)


class PsycopoolOtelPeer(PsycopoolPeer):
    """psycopool.ConnectionPool instrumented with OpenTelemetry (an in-memory reader)."""

    key = "psycopool-otel"
    label = "psycopool ConnectionPool + OpenTelemetry"
    modules: ClassVar[tuple[str, ...]] = ("psycopg2", "opentelemetry.sdk")
    install_hint = "pip install 'psycopool[bench,otel]'"
    opt_in = True

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from psycopool.metrics.otel import instrument

        super().open(dsn, min_size, max_size)
        self.provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        instrument(self.pool, meter_provider=self.provider)

    def close(self) -> None:
        super().close()
        self.provider.shutdown()


class _Psycopg2StylePeer(Peer):
    """A psycopg2.pool-style ThreadedConnectionPool: keys, close=, raises "exhausted"."""

    raises_when_exhausted = True

    def _pool_class(self) -> Any:
        raise NotImplementedError

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        self.pool = self._pool_class()(min_size, max_size, dsn)

    def get(self) -> Any:
        return self.pool.getconn()

    def put(self, conn: Any, close: bool = False) -> None:
        self.pool.putconn(conn, close=close)

    def close(self) -> None:
        if self.pool is not None and not self.pool.closed:
            self.pool.closeall()

    def is_exhausted(self, exc: BaseException) -> bool:
        return "exhausted" in str(exc)


class PsycopoolDropInPeer(_Psycopg2StylePeer):
    """psycopool.pool.ThreadedConnectionPool: the psycopg2.pool drop-in (raises when exhausted)."""

    key = "psycopool.pool"
    label = "psycopool.pool Threaded (drop-in)"
    modules = ("psycopg2",)
    distributions = ("psycopool",)
    is_psycopool = True

    def _pool_class(self) -> Any:
        from psycopool.pool import ThreadedConnectionPool

        return ThreadedConnectionPool


# -- psycopg2.pool -----------------------------------------------------------------------------


class Psycopg2PoolPeer(_Psycopg2StylePeer):
    key = "psycopg2.pool"
    label = "psycopg2.pool Threaded"
    modules = ("psycopg2.pool",)
    distributions = ("psycopg2-binary", "psycopg2")
    install_hint = "pip install psycopg2-binary"
    compares_to_drop_in = True

    def _pool_class(self) -> Any:
        return importlib.import_module("psycopg2.pool").ThreadedConnectionPool


# -- psycopg_pool (psycopg 3) ------------------------------------------------------------------


class PsycopgPoolPeer(Peer):
    key = "psycopg_pool"
    label = "psycopg_pool get/put"
    modules = ("psycopg", "psycopg_pool")
    distributions = ("psycopg-pool", "psycopg")
    install_hint = "pip install 'psycopg[binary]' psycopg-pool"
    driver = "psycopg"

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        # It warns on every return of a connection still in a transaction, and when it
        # discards a broken one: expected here, and noisy.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        psycopg_pool: Any = importlib.import_module("psycopg_pool")
        self.pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=True,
            timeout=_GET_TIMEOUT,
            name=self.key,
        )
        self.pool.wait(timeout=60.0)

    def get(self) -> Any:
        return self.pool.getconn()

    def put(self, conn: Any, close: bool = False) -> None:
        if close:  # psycopg_pool discards a closed connection on return
            with contextlib.suppress(Exception):
                conn.close()
        self.pool.putconn(conn)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def connection(self) -> AbstractContextManager[Any]:
        cm: AbstractContextManager[Any] = self.pool.connection()
        return cm


class PsycopgPoolWithPeer(PsycopgPoolPeer):
    key = "psycopg_pool-with"
    label = "psycopg_pool with"
    uses_context = True


# -- SQLAlchemy --------------------------------------------------------------------------------


class SQLAlchemyPeer(Peer):
    """QueuePool of raw psycopg2 connections: pool_size=max_size, max_overflow=0.

    QueuePool has no minimum: it opens on demand and keeps up to ``pool_size``. ``open`` warms
    ``min_size`` connections so it starts like the others.
    """

    key = "sqlalchemy"
    label = "SQLAlchemy QueuePool"
    modules = ("sqlalchemy.pool", "psycopg2")
    distributions = ("SQLAlchemy",)
    install_hint = "pip install sqlalchemy"

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2

        sa_pool: Any = importlib.import_module("sqlalchemy.pool")
        self.pool = sa_pool.QueuePool(
            lambda: psycopg2.connect(dsn),
            pool_size=max_size,
            max_overflow=0,
            timeout=_GET_TIMEOUT,
        )
        warm = [self.pool.connect() for _ in range(min_size)]
        for conn in warm:
            conn.close()

    def get(self) -> Any:
        return self.pool.connect()

    def put(self, conn: Any, close: bool = False) -> None:
        if close:
            conn.invalidate()
        conn.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.dispose()


# -- DBUtils -----------------------------------------------------------------------------------


class DBUtilsPeer(Peer):
    """DBUtils PooledDB over psycopg2, dedicated (unshared) connections, blocking when full."""

    key = "dbutils"
    label = "DBUtils PooledDB"
    modules = ("dbutils.pooled_db", "psycopg2")
    distributions = ("DBUtils",)
    install_hint = "pip install dbutils"

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2

        pooled_db: Any = importlib.import_module("dbutils.pooled_db")
        self.pool = pooled_db.PooledDB(
            psycopg2,
            mincached=min_size,
            maxcached=max_size,
            maxconnections=max_size,
            blocking=True,
            dsn=dsn,
        )

    def get(self) -> Any:
        return self.pool.connection(shareable=False)

    def put(self, conn: Any, close: bool = False) -> None:
        if close:
            # No discard API: close the steady connection underneath; DBUtils reopens it on
            # the next use. The proxy's close() returns it to the pool.
            steady = conn._con
            if steady is not None:
                steady._close()
        conn.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


# -- psycopg2_pool (PyPI) ----------------------------------------------------------------------


class Psycopg2PoolPyPIPeer(Peer):
    """The ``psycopg2-pool`` PyPI package's ThreadSafeConnectionPool (raises when exhausted)."""

    key = "psycopg2_pool"
    label = "psycopg2_pool ThreadSafe"
    modules = ("psycopg2_pool",)
    distributions = ("psycopg2-pool",)
    install_hint = "pip install psycopg2-pool"
    raises_when_exhausted = True
    compares_to_drop_in = True

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        module: Any = importlib.import_module("psycopg2_pool")
        # idle_timeout=0: like psycopg2.pool, keep returned connections only up to minconn.
        self.pool = module.ThreadSafeConnectionPool(
            minconn=min_size, maxconn=max_size, idle_timeout=0, dsn=dsn
        )

    def get(self) -> Any:
        return self.pool.getconn()

    def put(self, conn: Any, close: bool = False) -> None:
        if close:
            with contextlib.suppress(Exception):
                conn.close()
        self.pool.putconn(conn)

    def close(self) -> None:
        # It has no close-all: clear() closes the idle connections only.
        if self.pool is not None:
            self.pool.clear()
            with self.pool.lock:
                in_use = list(self.pool.connections_in_use)
            for conn in in_use:
                with contextlib.suppress(Exception):
                    conn.close()

    def is_exhausted(self, exc: BaseException) -> bool:
        return "exhausted" in str(exc)


# -- floors ------------------------------------------------------------------------------------


class _FloorBase(Peer):
    """The least a pool can do: a LIFO deque of open psycopg2 connections and a count."""

    modules = ("psycopg2",)
    distributions = ()

    def __init__(self) -> None:
        super().__init__()
        self._dsn = ""
        self._max = 0
        self._size = 0
        self._idle: collections.deque[Any] = collections.deque()
        self._lent: set[int] = set()
        self._all: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)

    def open(self, dsn: str, min_size: int, max_size: int) -> None:
        import psycopg2

        self._dsn, self._max = dsn, max_size
        for _ in range(min_size):
            conn = psycopg2.connect(dsn)
            self._all[id(conn)] = conn
            self._idle.append(conn)
        self._size = min_size

    def _connect_reserved(self) -> Any:
        """Connect for a slot already counted in ``_size``, outside the lock."""
        import psycopg2

        try:
            conn = psycopg2.connect(self._dsn)
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._all[id(conn)] = conn
        return conn

    def put(self, conn: Any, close: bool = False) -> None:
        if not close:
            status = conn.get_transaction_status()
            if status == _PG2_UNKNOWN:
                close = True
            elif status != _PG2_IDLE:
                try:
                    conn.rollback()
                except Exception:
                    close = True
        if close:
            with contextlib.suppress(Exception):
                conn.close()
            with self._cond:
                self._all.pop(id(conn), None)
                self._size -= 1
                self._cond.notify()
            return
        self._put_idle(conn)

    def _put_idle(self, conn: Any) -> None:
        with self._cond:
            self._idle.append(conn)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            conns = list(self._all.values())
            self._all.clear()
            self._idle.clear()
            self._size = 0
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


class FloorLockPeer(_FloorBase):
    """deque + Lock; raises when exhausted (like psycopg2.pool)."""

    key = "floor-lock"
    label = "floor: deque+Lock"
    raises_when_exhausted = True

    def get(self) -> Any:
        # The bare Lock, not the Condition: no waiter to wake, nothing else to pay for.
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._size >= self._max:
                raise Exhausted("connection pool exhausted")
            self._size += 1
        return self._connect_reserved()

    def _put_idle(self, conn: Any) -> None:
        with self._lock:
            self._idle.append(conn)

    def is_exhausted(self, exc: BaseException) -> bool:
        return isinstance(exc, Exhausted)


class FloorConditionPeer(_FloorBase):
    """deque + threading.Condition; waits when exhausted (not FIFO: a returner may barge)."""

    key = "floor-cond"
    label = "floor: deque+Condition"

    def get(self) -> Any:
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._size < self._max:
                    self._size += 1
                    break
                self._cond.wait()
        return self._connect_reserved()


#: Every peer, in table order. psycopool's rows first.
PEERS: tuple[type[Peer], ...] = (
    PsycopoolPeer,
    PsycopoolWithPeer,
    PsycopoolPsycopgPeer,
    PsycopoolPingPeer,
    PsycopoolPrometheusPeer,
    PsycopoolOtelPeer,
    PsycopoolDropInPeer,
    Psycopg2PoolPeer,
    PsycopgPoolPeer,
    PsycopgPoolWithPeer,
    SQLAlchemyPeer,
    DBUtilsPeer,
    Psycopg2PoolPyPIPeer,
    FloorLockPeer,
    FloorConditionPeer,
)


def all_peers() -> tuple[type[Peer], ...]:
    """The sync peers, then the async ones."""
    from psycopool.bench.peers_async import ASYNC_PEERS

    return PEERS + ASYNC_PEERS


def peer_by_key(key: str) -> type[Peer]:
    for peer in all_peers():
        if peer.key == key:
            return peer
    raise KeyError(key)
