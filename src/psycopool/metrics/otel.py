"""OpenTelemetry metrics for psycopool pools, per the semantic conventions v1.44.0.

``pip install 'psycopool[otel]'``, then::

    from psycopool.metrics.otel import instrument
    instrument(pool)                       # the global MeterProvider
    instrument(pool, meter_provider=mp)    # or yours

Instruments (names, types and units as the conventions' "database client
connection pool" metrics; attribute ``db.client.connection.pool.name``):

- ``db.client.connection.count`` (UpDownCounter, ``{connection}``), with
  ``db.client.connection.state`` = ``idle`` / ``used``
- ``db.client.connection.idle.max``, ``.idle.min``, ``.max`` (UpDownCounter, ``{connection}``)
- ``db.client.connection.pending_requests`` (UpDownCounter, ``{request}``)
- ``db.client.connection.timeouts`` (Counter, ``{timeout}``)
- ``db.client.connection.create_time``, ``.wait_time``, ``.use_time`` (Histogram, ``s``)

plus one of psycopool's own, outside the conventions: ``psycopool.connection.longest_use``
(Gauge, ``s``): how long the connection lent the longest ago has been out (leaks).

Counts are observed when the reader collects (asynchronous instruments). The
histograms are fed from the pool's recorded samples when the reader collects
and once a second in the background, never on the borrower's path.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from psycopool import __version__
from psycopool._timings import BOUNDS, Sink
from psycopool.metrics._view import FLUSHER, PoolView

__all__ = ["SEMCONV_VERSION", "Instrumentation", "instrument"]

logger = logging.getLogger("psycopool")

#: The semantic conventions version these instruments follow.
SEMCONV_VERSION = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

#: Default of instrument(max_samples=...): samples recorded per histogram, pool and flush
#: (about a second) at most. The SDK's Histogram.record costs microseconds per call: above
#: this rate the samples are thinned evenly (every k-th kept, so the distribution's shape
#: stays, its count doesn't) and a warning is logged once.
MAX_RECORDS_PER_FLUSH = 5_000

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"


class _Instruments:
    """The instruments of one meter, observing every pool instrumented with it."""

    def __init__(self, meter: Meter) -> None:
        self._lock = threading.Lock()
        self._views: list[PoolView] = []
        boundaries = list(BOUNDS)
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=boundaries,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=boundaries,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=boundaries,
        )
        # The first callback drains every pool's samples into the histograms above: the
        # SDK runs all callbacks before it reads the histograms, so they land in this export.
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._count],
            unit="{connection}",
            description=(
                "The number of connections that are currently in state described by the"
                " `state` attribute."
            ),
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            callbacks=[self._gauge("idle_max")],
            unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.min",
            callbacks=[self._gauge("idle_min")],
            unit="{connection}",
            description="The minimum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._gauge("max")],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._gauge("pending_requests")],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )
        meter.create_observable_counter(
            "db.client.connection.timeouts",
            callbacks=[self._gauge("timeouts")],
            unit="{timeout}",
            description=(
                "The number of connection timeouts that have occurred trying to obtain a"
                " connection from the pool."
            ),
        )
        meter.create_observable_gauge(
            "psycopool.connection.longest_use",
            callbacks=[self._gauge("longest_held")],
            unit="s",
            description="How long the connection lent the longest ago has been out.",
        )

    def add(self, view: PoolView, max_samples: int | None) -> Sink:
        sink = self._sink_for(view.name, max_samples)
        with self._lock:
            views = [v for v in self._views if v.alive]
            if any(v.name == view.name for v in views):
                raise ValueError(f"a pool named {view.name!r} is already instrumented")
            self._views = [*views, view]
        view.timings.add_sink(sink)
        return sink

    def remove(self, view: PoolView, sink: Sink) -> None:
        view.timings.drain()  # what was recorded so far still counts
        view.timings.remove_sink(sink)
        with self._lock:
            self._views = [v for v in self._views if v is not view and v.alive]

    def _sink_for(self, name: str, max_samples: int | None) -> Sink:
        attributes = {POOL_NAME: name}
        histograms = {"wait": self.wait_time, "use": self.use_time, "create": self.create_time}
        ref = weakref.ref(self)

        warned: list[bool] = []

        def sink(kind: str, samples: list[float], zeros: int) -> None:
            if ref() is None:
                return
            total = len(samples) + zeros
            cap = MAX_RECORDS_PER_FLUSH if max_samples is None else max_samples
            if cap and total > cap:
                step = -(-total // cap)
                samples = samples[::step]
                zeros //= step
                if not warned:
                    warned.append(True)
                    logger.warning(
                        "pool %r: %d %s-time samples in one flush: OpenTelemetry histograms"
                        " now keep 1 in %d above %d per second (the Prometheus collector"
                        " keeps them all)",
                        name,
                        total,
                        kind,
                        step,
                        cap,
                    )
            record = histograms[kind].record
            for value in samples:
                record(value, attributes)
            for _ in range(zeros):  # borrows that did not wait
                record(0.0, attributes)

        return sink

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for view in self._views:
            view.timings.drain()
            gauges = view.gauges()
            if gauges is None:
                continue
            out.append(Observation(gauges.idle, {POOL_NAME: view.name, STATE: "idle"}))
            out.append(Observation(gauges.used, {POOL_NAME: view.name, STATE: "used"}))
        return out

    def _gauge(self, field: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            out = []
            for view in self._views:
                gauges = view.gauges()
                if gauges is not None:
                    out.append(Observation(getattr(gauges, field), {POOL_NAME: view.name}))
            return out

        return callback


_by_provider: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
_global: list[_Instruments] = []
_lock = threading.Lock()


class Instrumentation:
    """What :func:`instrument` returns: call :meth:`detach` to stop observing the pool."""

    def __init__(
        self, instruments: _Instruments, view: PoolView, max_samples: int | None = None
    ) -> None:
        self._instruments = instruments
        self._view = view
        self._sink = instruments.add(view, max_samples)

    @property
    def pool_name(self) -> str:
        return self._view.name

    def detach(self) -> None:
        self._instruments.remove(self._view, self._sink)


def instrument(
    pool: Any,
    *,
    meter_provider: MeterProvider | None = None,
    name: str | None = None,
    max_samples: int | None = None,
) -> Instrumentation:
    """Publish ``pool``'s metrics through ``meter_provider`` (default: the global one).

    ``name`` is the ``db.client.connection.pool.name`` attribute (default: the
    pool's ``name``); it must be unique in the application. ``max_samples``: samples
    recorded per histogram and second at most, thinned evenly above
    (default :data:`MAX_RECORDS_PER_FLUSH`; 0: no limit).
    """
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 0
    ):
        raise ValueError(f"max_samples must be an integer >= 0 or None; got {max_samples!r}")
    view = PoolView(pool, name)
    with _lock:
        if meter_provider is None:
            if not _global:
                _global.append(_Instruments(_meter(metrics.get_meter_provider())))
            instruments = _global[0]
        else:
            instruments = _by_provider.get(meter_provider)  # type: ignore[assignment]
            if instruments is None:
                instruments = _Instruments(_meter(meter_provider))
                _by_provider[meter_provider] = instruments
    instrumentation = Instrumentation(instruments, view, max_samples)
    FLUSHER.add(view.timings)
    return instrumentation


def _meter(provider: MeterProvider) -> Meter:
    return provider.get_meter("psycopool", __version__, schema_url=SCHEMA_URL)
