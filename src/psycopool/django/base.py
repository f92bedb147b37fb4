"""The backend's ``DatabaseWrapper``: Django's PostgreSQL backend, borrowing from psycopool.

Django's own ``"pool"`` option works with psycopg_pool only (it returns connections through an
attribute only psycopg_pool sets) and refuses psycopg2. This wrapper keeps every other
behaviour of Django's backend and changes where connections come from and go back to:
``connect()`` borrows, ``close()`` returns. Between the two, Django's connection handling
(``CONN_MAX_AGE``, ``close_old_connections``, atomic blocks, test cases) runs unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3

from psycopool import ConnectionPool
from psycopool._args import show

#: Arguments the backend sets itself: the rest of OPTIONS["pool"] goes to ConnectionPool.
_RESERVED = ("conninfo", "kwargs", "driver", "open")

# One pool per alias and process, shared by the per-thread wrappers, as in Django.
_pools: dict[str, tuple[tuple[Any, ...], ConnectionPool]] = {}
_retired: set[ConnectionPool] = set()
_lock = threading.Lock()


def _settings_key(settings_dict: dict[str, Any]) -> tuple[Any, ...]:
    """What the pool's connections depend on: a change (the test database) means a new pool."""
    return tuple(repr(settings_dict.get(k)) for k in ("NAME", "USER", "HOST", "PORT", "OPTIONS"))


def _close_when_idle(pool: ConnectionPool) -> None:
    """Close a replaced pool now if nothing is lent, else when its last loan comes back."""
    with _lock:
        lent = pool.stats()["connections_in_use"]
        if lent:
            _retired.add(pool)
            return
        _retired.discard(pool)
    pool.close()


class DatabaseWrapper(postgresql.DatabaseWrapper):  # type: ignore[misc]
    """Django's PostgreSQL ``DatabaseWrapper`` with connections from a psycopool pool."""

    #: The pool this wrapper's current connection came from (the registry may have moved on).
    _psycopool_lender: ConnectionPool | None = None
    # Set by Django's base class.
    alias: str
    settings_dict: dict[str, Any]
    connection: Any

    @property
    def pool(self) -> ConnectionPool | None:
        options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == NO_DB_ALIAS or not options:
            return None
        key = _settings_key(self.settings_dict)
        with _lock:
            found = _pools.get(self.alias)
        if found is not None and found[0] == key:
            return found[1]
        pool = self._psycopool_new_pool(options)
        replaced: ConnectionPool | None = None
        with _lock:
            current = _pools.get(self.alias)
            if current is not None and current[0] == key:
                replaced, pool = pool, current[1]  # another thread won; ours never opened
            else:
                if current is not None:
                    replaced = current[1]
                _pools[self.alias] = (key, pool)
        if replaced is not None:
            _close_when_idle(replaced)
        return pool

    def _psycopool_new_pool(self, options: Any) -> ConnectionPool:
        if options is True:
            options = {}
        if not isinstance(options, dict):
            raise ImproperlyConfigured(
                f"OPTIONS['pool'] must be True or a dict of psycopool.ConnectionPool"
                f" arguments; got {show(options)}"
            )
        reserved = sorted(k for k in options if k in _RESERVED)
        if reserved:
            given = ", ".join(f"{k}={show(options[k])}" for k in reserved)
            raise ImproperlyConfigured(
                f"OPTIONS['pool'] can't set {', '.join(reserved)}: the backend sets them"
                f" from DATABASES; got {given}"
            )
        options = dict(options)
        user_configure = options.pop("configure", None)
        if user_configure is not None and not callable(user_configure):
            raise ImproperlyConfigured(
                "OPTIONS['pool']['configure'] must be a callable taking a connection, or"
                f" None; got {show(user_configure)}"
            )
        if "check" not in options and self.settings_dict["CONN_HEALTH_CHECKS"]:
            options["check"] = "ping"
        options.setdefault("name", f"django-{self.alias}")
        isolation_level = self._psycopool_isolation_level()

        def configure(conn: Any) -> None:
            # What Django does to a new connection, done once per connection: it becomes
            # the state the pool restores on every return (autocommit, isolation level).
            if isolation_level is not None:
                conn.isolation_level = isolation_level
            conn.autocommit = True
            if not is_psycopg3:
                postgresql.psycopg2.extras.register_default_jsonb(
                    conn_or_curs=conn, loads=lambda x: x
                )
            self._configure_connection(conn)
            if user_configure is not None:
                user_configure(conn)

        return ConnectionPool(
            kwargs=self._psycopool_connect_params(),
            driver="psycopg" if is_psycopg3 else "psycopg2",
            configure=configure,
            open="lazy",  # opened by the first borrow in each process: never before a fork
            **options,
        )

    def _psycopool_connect_params(self) -> dict[str, Any]:
        """Django's connection parameters, without the pool option it refuses on psycopg2."""
        settings_dict = self.settings_dict
        options = {k: v for k, v in settings_dict["OPTIONS"].items() if k != "pool"}
        self.settings_dict = {**settings_dict, "OPTIONS": options}
        try:
            params: dict[str, Any] = super().get_connection_params()
        finally:
            self.settings_dict = settings_dict
        return params

    def _psycopool_isolation_level(self) -> Any:
        value = self.settings_dict["OPTIONS"].get("isolation_level")
        if value is None:
            return None
        try:
            return IsolationLevel(value)
        except ValueError:  # its message holds the value unmasked: not chained, not kept
            pass
        raise ImproperlyConfigured(
            f"Invalid transaction isolation level {show(value)} specified in"
            " OPTIONS['isolation_level']. Use one of the"
            f" {'psycopg.IsolationLevel' if is_psycopg3 else 'psycopg2.extensions'} values."
        )

    def get_connection_params(self) -> dict[str, Any]:
        if self.pool is None:  # e.g. the "no database" connection creating a test database
            return self._psycopool_connect_params()
        return {}  # the pool has them

    def get_new_connection(self, conn_params: Any) -> Any:
        pool = self.pool
        if pool is None:
            return super().get_new_connection(conn_params)
        level = self._psycopool_isolation_level()
        self.isolation_level = IsolationLevel.READ_COMMITTED if level is None else level
        conn = pool.getconn()
        self._psycopool_lender = pool
        return conn

    def init_connection_state(self) -> None:
        super().init_connection_state()  # with a pool, configure did the rest

    def _close(self) -> None:
        lender = self._psycopool_lender
        if self.connection is None or lender is None:
            super()._close()
            return
        conn, self.connection, self._psycopool_lender = self.connection, None, None
        with self.wrap_database_errors:
            lender.putconn(conn)
        if lender in _retired:
            _close_when_idle(lender)

    def close_pool(self) -> None:
        """Close this alias's pool (Django calls it before dropping a test database)."""
        with _lock:
            found = _pools.pop(self.alias, None)
        if found is not None:
            _close_when_idle(found[1])
