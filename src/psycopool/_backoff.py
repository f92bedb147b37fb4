"""Reconnect backoff and the ``reconnect_timeout`` rule: pure bookkeeping, no threads, no I/O.

Shared by the threaded upkeep and the asyncio one: the caller attempts a
connection, reports the outcome here, and sleeps (or awaits) the delay it
gets back. Times come from the caller's clock, so tests can use a fake one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: First delay, growth factor and ceiling, in seconds.
BACKOFF_FIRST = 0.1
BACKOFF_FACTOR = 2.0
BACKOFF_MAX = 5.0
#: The ceiling while borrowers are waiting: a failover's new primary is found within about
#: this long of its promotion, at a bounded rate of attempts (one connector: at most
#: 1 / (0.9 * 0.15) = 7.4 a second per pool, against up to 5 s between them when idle).
BACKOFF_WAITING_MAX = 0.15


class Backoff:
    """Consecutive connection failures, the delay before the next attempt, and when to give up.

    ``reconnect_timeout`` (seconds, or None for never) counts from the first
    failure of a run of failures. When it is over, :meth:`failed` reports it
    once (``gave_up``); attempts go on at the longest delay, so a pool whose
    application chooses not to exit still recovers when the server is back.
    """

    __slots__ = ("_jitter", "failures", "first_failure", "gave_up", "reconnect_timeout")

    def __init__(
        self,
        reconnect_timeout: float | None = None,
        *,
        jitter: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.reconnect_timeout = reconnect_timeout
        self._jitter = jitter
        self.failures = 0
        self.first_failure = 0.0
        #: True once the current run of failures outlasted reconnect_timeout.
        self.gave_up = False

    def failed(self, now: float, *, waiting: bool = False) -> tuple[float, bool]:
        """Record a failed attempt at ``now``: (delay before the next, just gave up).

        "Just gave up" is true exactly once per run of failures: the moment to
        call ``reconnect_failed``. ``waiting``: borrowers are waiting for a
        connection, so the delay is at most ``BACKOFF_WAITING_MAX``.
        """
        self.failures += 1
        if self.failures == 1:
            self.first_failure = now
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * BACKOFF_FACTOR ** min(self.failures - 1, 64))
        if waiting:
            delay = min(delay, BACKOFF_WAITING_MAX)
        delay *= self._jitter(0.9, 1.1)
        give_up = False
        timeout = self.reconnect_timeout
        if timeout is not None and not self.gave_up:
            left = self.first_failure + timeout - now
            if left <= 0:
                self.gave_up = give_up = True
            else:
                delay = min(delay, left)  # the last attempt lands on the deadline
        return delay, give_up

    def succeeded(self) -> int:
        """Record a successful attempt; return how many failures it ends (0: none)."""
        failures = self.failures
        self.failures = 0
        self.gave_up = False
        return failures
