"""The server side of the bench: an admin connection and the thread that counts connections."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from psycopool.bench.peers_base import APP_PREFIX

__all__ = ["ADMIN_APP", "Monitor", "ServerAdmin"]

ADMIN_APP = "psycopool-admin-bench"  # outside APP_PREFIX: the monitor does not count it

_CLIENTS = (
    "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
)


def _connect_admin(dsn: str) -> Any:
    import psycopg2
    from psycopg2.extensions import make_dsn

    conn = psycopg2.connect(make_dsn(dsn, application_name=ADMIN_APP))
    conn.autocommit = True
    return conn


class ServerAdmin:
    """An autocommit admin connection: counts and terminates a peer's backends. Thread-safe."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._lock = threading.Lock()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed:
                    self._conn = _connect_admin(self._dsn)
                try:
                    with self._conn.cursor() as cur:
                        cur.execute(sql, params)
                        rows: list[tuple[Any, ...]] = cur.fetchall()
                        return rows
                except Exception:
                    with contextlib.suppress(Exception):
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")

    def server_version(self) -> str:
        return str(self.query("SHOW server_version")[0][0])

    def max_connections(self) -> int:
        return int(self.query("SHOW max_connections")[0][0])

    def count(self, app: str) -> int:
        return len(self.query(_CLIENTS, (app,)))

    def wait_count(self, app: str, expected: int, timeout: float) -> int:
        """Poll until ``count(app) == expected`` or ``timeout``; the last count."""
        deadline = time.monotonic() + timeout
        while True:
            n = self.count(app)
            if n == expected or time.monotonic() >= deadline:
                return n
            time.sleep(0.02)

    def terminate(self, app: str) -> tuple[int, int]:
        """Terminate ``app``'s backends: (how many, how many were running a query)."""
        rows = self.query(
            "SELECT state = 'active', pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            (app,),
        )
        killed = [bool(active) for active, ok in rows if ok]
        return len(killed), sum(killed)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    self._conn.close()
                self._conn = None


class Monitor:
    """A thread counting each peer's server connections every ``interval`` s; peaks per peer."""

    def __init__(self, dsn: str, interval: float = 0.005) -> None:
        self._dsn = dsn
        self._interval = interval
        self._cond = threading.Condition()
        self._current: dict[str, int] = {}
        self._peaks: dict[str, int] = {}
        self._generation = 0
        self._wanted = 0  # callers in sync/watch/peak, plus watched peers: poll while > 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(5)

    def _run(self) -> None:
        sql = (
            "SELECT application_name, count(*) FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND application_name LIKE %s"
            " GROUP BY application_name"
        )
        conn: Any = None
        try:
            while not self._stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = _connect_admin(self._dsn)
                    with conn.cursor() as cur:
                        cur.execute(sql, (APP_PREFIX + "%",))
                        counts = {name: int(n) for name, n in cur.fetchall()}
                except Exception as exc:  # the server restarting, say: try again
                    self._error = exc
                    conn = None
                    time.sleep(0.05)
                    continue
                with self._cond:
                    self._current = counts
                    for name in self._peaks:
                        self._peaks[name] = max(self._peaks[name], counts.get(name, 0))
                    self._generation += 1
                    self._cond.notify_all()
                    # Idle (no query load on a small machine) while nothing is watched.
                    self._cond.wait_for(lambda: self._wanted > 0 or self._stop.is_set())
                self._stop.wait(self._interval)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def sync(self, timeout: float = 2.0) -> None:
        """Wait for a sample taken entirely after this call."""
        with self._cond:
            self._wanted += 1
            self._cond.notify_all()
            try:
                target = self._generation + 2
                self._cond.wait_for(lambda: self._generation >= target, timeout)
            finally:
                self._wanted -= 1

    def watch(self, app: str) -> None:
        """Track ``app``'s peak, from its current count, until :meth:`peak`."""
        with self._cond:
            self._wanted += 1
        self.sync()
        with self._cond:
            self._peaks[app] = self._current.get(app, 0)

    def peak(self, app: str) -> int:
        """``app``'s peak since :meth:`watch`; stops tracking it."""
        self.sync()
        return self.forget(app)

    def forget(self, app: str) -> int:
        """Stop tracking ``app`` (no-op if not tracked); its peak so far."""
        with self._cond:
            peak = self._peaks.pop(app, None)
            if peak is None:
                return 0
            self._wanted -= 1
            return peak
