"""Wait, use and create times of one pool's connections: recorded cheaply, bucketed late.

Nothing is recorded until an exporter (``psycopool.metrics``) attaches a
:class:`Timings` to a pool's engine. From then on the hot path pays one list
append per returned connection (its use time, under the lock it already
holds); a borrow that did not wait records nothing at all: at collection time
it is counted in the wait-time histogram's first bucket, as the difference
between connections lent (returned + still out) and borrows that waited.
Bucketing, sums and handing samples to exporters happen in :meth:`Timings.drain`,
called by whoever collects (a scrape, an export, a background flush).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from psycopool._engine import Engine

#: Histogram bucket upper bounds in seconds (``le`` in Prometheus terms), from 100 µs to
#: a minute: fine enough below a millisecond for a pool's own cost, coarse above.
BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: A sink gets each drained batch: (histogram name, samples in seconds, zero-wait borrows).
Sink = Callable[[str, list[float], int], None]


class Histogram:
    """A cumulative histogram with :data:`BOUNDS` (and +Inf); ``counts[i]`` is bucket i alone."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.sum = 0.0

    def add(self, samples: list[float], zeros: int = 0) -> None:
        counts = self.counts
        for value in samples:
            # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
            counts[bisect_left(BOUNDS, value)] += 1
        counts[0] += zeros
        self.count += len(samples) + zeros
        self.sum += sum(samples)

    def cumulative(self) -> list[int]:
        """Counts of values <= each bound, then the total (+Inf)."""
        out = []
        running = 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


class Timings:
    """The histograms of one engine, fed by the lists the front doors append to."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.wait = Histogram()
        self.use = Histogram()
        self.create = Histogram()
        self._sinks: list[Sink] = []
        self._returns = 0  # use-time samples drained so far
        self._waited = 0  # wait-time samples drained so far
        self._immediate = 0  # borrows counted in the first wait bucket so far
        self._base = 0
        engine.still(self._attach)

    def _attach(self) -> None:
        """Start recording (books still)."""
        engine = self._engine
        # Loans already out when we attach were not borrowed under our watch.
        self._base = len(engine.in_use)
        engine.use_times = []
        engine.wait_times = []
        engine.create_times = []

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    def drain(self) -> None:
        """Take the recorded samples, bucket them and hand them to every sink."""
        # Taken with the books still (on an asyncio pool's loop), bucketed after
        # under our own lock: a reader waiting for the loop holds no lock the
        # loop's thread may want.
        taken = self._engine.still(self._take)
        if taken is None:
            return  # detached
        use, wait, create, zeros = taken
        with self._lock:
            self.use.add(use)
            self.wait.add(wait, zeros)
            self.create.add(create)
            for sink in self._sinks:
                sink("use", use, 0)
                sink("wait", wait, zeros)
                sink("create", create, 0)

    def _take(self) -> tuple[list[float], list[float], list[float], int] | None:
        """Swap the engine's sample lists for empty ones (books still); count the immediates."""
        engine = self._engine
        use, wait, create = engine.use_times, engine.wait_times, engine.create_times
        if use is None or wait is None or create is None:
            return None
        engine.use_times, engine.wait_times, engine.create_times = [], [], []
        self._returns += len(use)
        self._waited += len(wait)
        # Every loan is either still out or was returned (one use sample each); those
        # that waited left a wait sample. A handoff seen before its waiter woke counts
        # as immediate until then: keep the count monotonic and let it catch up.
        immediate = self._returns + len(engine.in_use) - self._base - self._waited
        zeros = max(0, immediate - self._immediate)
        self._immediate += zeros
        return use, wait, create, zeros

    def snapshot(self, name: str) -> tuple[list[int], float]:
        """Histogram ``name`` ("wait", "use", "create"): cumulative counts and sum, consistent."""
        with self._lock:
            histogram: Histogram = getattr(self, name)
            return histogram.cumulative(), histogram.sum


def timings_for(engine: Engine) -> Timings:
    """The engine's :class:`Timings`, attached on first use (recording starts then)."""
    timings = engine.timings
    if timings is None:
        with _attach_lock:
            timings = engine.timings
            if timings is None:
                timings = engine.timings = Timings(engine)
    return timings


_attach_lock = threading.Lock()

__all__ = ["BOUNDS", "Histogram", "Timings", "timings_for"]
