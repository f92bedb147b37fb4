"""What the exporters read from a pool, whichever front door it is."""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from psycopool._engine import Engine
from psycopool._timings import Timings, timings_for


@dataclass
class Gauges:
    """One consistent reading of a pool's gauges (taken under its lock)."""

    idle: int
    used: int
    pending_requests: int
    max: int
    idle_min: int
    idle_max: int
    timeouts: int
    longest_held: float


class PoolView:
    """A weak handle on one pool: its name, its engine, its gauges and its timings."""

    def __init__(self, pool: Any, name: str | None = None) -> None:
        engine = getattr(pool, "_engine", None)
        if not isinstance(engine, Engine):
            raise TypeError(f"pool must be a psycopool pool; got {type(pool).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a string or None; got {name!r}")
        self.name: str = name or getattr(pool, "name", None) or engine.name
        self._pool = weakref.ref(pool)
        self.engine = engine
        self.timings: Timings = timings_for(engine)

    @property
    def alive(self) -> bool:
        return self._pool() is not None

    def gauges(self) -> Gauges | None:
        """The gauges now, or None once the pool is gone."""
        pool = self._pool()
        if pool is None:
            return None
        engine = self.engine
        if hasattr(pool, "minconn"):  # the psycopg2.pool drop-in
            idle_min = pool.minconn
            # idle_timeout=0 is psycopg2's rule: keep a returned one only while < minconn idle.
            idle_max = pool.maxconn if pool.idle_timeout != 0 else pool.minconn
        else:
            idle_min = pool.min_size
            idle_max = pool.max_size

        def read() -> Gauges:
            now = engine.clock()
            oldest = min((e.borrowed_at for e in engine.in_use.values()), default=now)
            return Gauges(
                idle=len(engine.idle),
                used=len(engine.in_use),
                pending_requests=len(engine.waiters),
                max=engine.max_size,
                idle_min=idle_min,
                idle_max=idle_max,
                timeouts=engine.timeouts,
                longest_held=max(0.0, now - oldest),
            )

        return engine.still(read)

    def stats(self) -> dict[str, int] | None:
        pool = self._pool()
        if pool is None:
            return None
        stats: dict[str, int] = pool.stats()
        return stats


class Flusher:
    """One daemon thread per process draining attached timings every ``interval`` seconds.

    Exporters drain when they collect; this bounds what accumulates between
    collections (and feeds OpenTelemetry histograms between exports).
    """

    interval = 1.0

    def __init__(self) -> None:
        self._timings: weakref.WeakSet[Timings] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, timings: Timings) -> None:
        with self._lock:
            self._timings.add(timings)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="psycopool-metrics-flush", daemon=True
                )
                self._thread.start()

    def flush(self) -> None:
        for timings in list(self._timings):
            timings.drain()

    def _run(self) -> None:
        event = threading.Event()
        while True:
            event.wait(self.interval)
            try:
                self.flush()
            except Exception:  # an exporter's sink failed: keep flushing the others
                logger.exception("psycopool metrics flush failed")

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._thread = None
        if len(self._timings):
            self.add(next(iter(self._timings)))


logger = logging.getLogger("psycopool")
FLUSHER = Flusher()
os.register_at_fork(after_in_child=FLUSHER._after_fork_in_child)

__all__ = ["FLUSHER", "Gauges", "PoolView"]
