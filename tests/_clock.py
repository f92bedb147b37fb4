"""A clock the tests advance by hand, for the pools' time rules (no sleeping)."""

from __future__ import annotations


class FakeClock:
    """A monotonic clock the test advances by hand: ``clock = staticmethod(FakeClock())``."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
