"""Adapters for the pools under test: psycopool's rows, psycopg2.pool, psycopg_pool, SQLAlchemy,
DBUtils and psycopg2_pool."""

from __future__ import annotations

import contextlib
import importlib
import logging
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from psycopool.bench.peers_base import _GET_TIMEOUT, Peer


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
