"""A Prometheus collector for psycopool pools (``prometheus_client``).

``pip install 'psycopool[prometheus]'``, then::

    from psycopool.metrics.prometheus import register
    register(pool)                  # into prometheus_client's default REGISTRY
    prometheus_client.start_http_server(9187)

Every pool registered is published with a ``pool`` label: its ``stats()`` gauges
(``psycopool_pool_size``, ``psycopool_pool_available``, ...) and counters
(``psycopool_requests_num_total``, ...; counters in milliseconds become
``..._seconds_total``), the longest current loan, and histograms of wait, use
and connect times (``psycopool_wait_seconds``, ``psycopool_use_seconds``,
``psycopool_connect_seconds``). See ``docs/observability.md``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from psycopool._timings import BOUNDS
from psycopool.metrics._view import FLUSHER, PoolView

__all__ = ["PoolCollector", "register"]

#: stats() keys that are gauges (a level now); every other key is a counter.
GAUGES = {
    "pool_min": "Connections the pool keeps open at least (min_size, minconn).",
    "pool_max": "Connections the pool may open at most (max_size, maxconn).",
    "pool_size": "Connections that exist now: idle, lent, being opened or closed.",
    "pool_available": "Idle connections, ready to lend.",
    "requests_waiting": "Borrowers queued for a connection now.",
    "connections_in_use": "Connections lent now.",
}
_LE = [repr(b) for b in BOUNDS] + ["+Inf"]


class PoolCollector(Collector):
    """Publishes every added pool's metrics at each scrape; pools that are gone drop out."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self._lock = threading.Lock()
        self._views: list[PoolView] = []
        if registry is not None:
            registry.register(self)

    def add(self, pool: Any, name: str | None = None) -> None:
        """Publish ``pool`` under ``pool=name`` (default: the pool's ``name``)."""
        view = PoolView(pool, name)
        with self._lock:
            views = [v for v in self._views if v.alive]
            if any(v.name == view.name for v in views):
                raise ValueError(f"a pool named {view.name!r} is already published")
            self._views = [*views, view]
        FLUSHER.add(view.timings)

    def remove(self, name: str) -> None:
        """Stop publishing the pool named ``name``."""
        with self._lock:
            self._views = [v for v in self._views if v.name != name and v.alive]

    def describe(self) -> Iterable[Metric]:
        return []  # metric names depend on the pools' stats(): don't pre-register them

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}

        def family(kind: Any, name: str, doc: str) -> Any:
            if name not in families:
                families[name] = kind(name, doc, labels=["pool"])
            return families[name]

        histograms = (
            ("psycopool_wait_seconds", "wait", "Time to obtain a connection from the pool."),
            ("psycopool_use_seconds", "use", "Time from borrowing a connection to returning it."),
            ("psycopool_connect_seconds", "create", "Time to open a new connection."),
        )
        for view in list(self._views):
            view.timings.drain()
            gauges = view.gauges()
            stats = view.stats()
            if gauges is None or stats is None:
                continue
            labels = [view.name]
            for key, value in stats.items():
                if key in GAUGES:
                    family(GaugeMetricFamily, f"psycopool_{key}", GAUGES[key]).add_metric(
                        labels, value
                    )
                elif key.endswith("_ms"):
                    name = f"psycopool_{key[:-3]}_seconds"
                    doc = f"stats()[{key!r}] in seconds."
                    family(CounterMetricFamily, name, doc).add_metric(labels, value / 1000)
                elif key != "requests_timeouts":
                    doc = f"stats()[{key!r}]."
                    family(CounterMetricFamily, f"psycopool_{key}", doc).add_metric(labels, value)
            family(
                CounterMetricFamily,
                "psycopool_requests_timeouts",
                "Borrows that gave up: PoolTimeout, or the drop-in's 'exhausted'.",
            ).add_metric(labels, gauges.timeouts)
            family(
                GaugeMetricFamily,
                "psycopool_longest_loan_seconds",
                "How long the connection lent the longest ago has been out (0: none lent).",
            ).add_metric(labels, gauges.longest_held if gauges.used else 0.0)
            for name, attr, doc in histograms:
                cumulative, total = view.timings.snapshot(attr)
                buckets = list(zip(_LE, cumulative, strict=True))
                family(HistogramMetricFamily, name, doc).add_metric(labels, buckets, total)
        yield from families.values()


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, PoolCollector] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def register(
    pool: Any, *, name: str | None = None, registry: CollectorRegistry | None = None
) -> PoolCollector:
    """Publish ``pool`` in ``registry`` (default: prometheus_client's REGISTRY).

    One :class:`PoolCollector` per registry serves every pool registered in it.
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = PoolCollector(registry)
    collector.add(pool, name)
    return collector
