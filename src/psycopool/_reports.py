"""What a pool tells about itself: :class:`Reports`, which :class:`BasePool` inherits.

Statistics, error messages and log lines (upkeep findings, slow waits, who
holds the connections), apart from ``_base.py`` so that the settings and the
upkeep decisions read on their own. Nothing here decides anything: it reads
the books and the counters (``pop_stats()`` also sets the counters back to zero).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from psycopool._args import reported_max
from psycopool._drivers import hide_password
from psycopool._errors import PoolClosed, PoolError, PoolTimeout, flavoured
from psycopool._loans import Loan, lent_locked, lent_summary, loans

if TYPE_CHECKING:
    from psycopool._base import Chores, Settings
    from psycopool._engine import Engine

logger = logging.getLogger("psycopool")

#: Counters kept in Settings.counters (updated by upkeep, connectors and returns).
UPKEEP_COUNTERS = (
    "connections_recycled",
    "connections_idle_closed",
    "connections_dropped",
    "connections_drained",
    "leaks_detected",
    "reconnects",
)


class Reports:
    """Statistics, errors and log lines of a modern pool (a base of :class:`BasePool`)."""

    #: Does a returned connection stay idle when no one waits? (Not in the null pools.)
    _keeps_idle = True

    # Set by BasePool.__init__.
    name: str
    leak_timeout: float | None
    _engine: Engine
    _settings: Settings
    _error: type[Exception]
    _closed: bool
    # Counters, updated under the engine lock.
    _requests_num: int
    _requests_queued: int
    _requests_wait_ms: int
    _requests_errors: int
    _returns_bad: int
    _usage: float  # seconds connections spent lent (usage_ms)

    @property
    def min_size(self) -> int:  # BasePool's property; declared here for _stats_locked
        raise NotImplementedError

    # -- statistics ----------------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """Gauges and counters, with psycopg_pool's names plus psycopool's own (see the docs)."""
        return self._engine.still(self._stats_locked)

    stats = get_stats

    def pop_stats(self) -> dict[str, int]:
        """:meth:`get_stats`, then set the counters (not the gauges) back to zero."""
        return self._engine.still(self._pop_stats_locked)

    def _pop_stats_locked(self) -> dict[str, int]:
        engine = self._engine
        stats = self._stats_locked()
        self._requests_num = self._requests_queued = self._requests_wait_ms = 0
        self._requests_errors = self._returns_bad = 0
        self._usage = 0.0
        engine.connections_num = engine.connections_ms = 0
        engine.connections_errors = engine.connections_lost = 0
        self._settings.counters.clear()
        return stats

    def _stats_locked(self) -> dict[str, int]:
        engine = self._engine
        stats = {
            "pool_min": self.min_size,
            "pool_max": engine.max_size,
            "pool_size": engine.size,
            "pool_available": len(engine.idle),
            "requests_waiting": len(engine.waiters),
            "requests_num": self._requests_num,
            "requests_queued": self._requests_queued,
            "requests_wait_ms": self._requests_wait_ms,
            "requests_errors": self._requests_errors,
            "returns_bad": self._returns_bad,
            "usage_ms": int(self._usage * 1000),
            "connections_num": engine.connections_num,
            "connections_ms": engine.connections_ms,
            "connections_errors": engine.connections_errors,
            "connections_lost": engine.connections_lost,
            "connections_in_use": len(engine.in_use),
            "requests_timeouts": engine.timeouts,
        }
        counters = self._settings.counters
        for key in UPKEEP_COUNTERS:
            stats[key] = counters[key]
        return stats

    # -- upkeep findings -----------------------------------------------------

    def _report(self, chores: Chores) -> None:
        """Log what an upkeep pass found (never under the lock)."""
        if chores.reclaimed:
            logger.warning(
                "pool %r: %d lent connections were garbage-collected without being"
                " returned; their slots are free again",
                self.name,
                chores.reclaimed,
            )
        for held, stack in chores.leaks:
            logger.warning(
                "pool %r: a connection has been lent for %.1f s (leak_timeout=%s);"
                " borrowed at:\n%s",
                self.name,
                held,
                self.leak_timeout,
                stack or "(stack not recorded)",
            )

    # -- errors --------------------------------------------------------------

    def _err(self, cls: type[PoolError], message: str) -> PoolError:
        return flavoured(cls, self._error)(message)

    def _closed_error(self) -> PoolError:
        if self._closed:
            return self._err(PoolClosed, f"pool {self.name!r} is already closed")
        return self._err(PoolClosed, f"pool {self.name!r} is not open yet: call open()")

    # -- who holds the connections -------------------------------------------

    def _return_reason(self, broken: bool, ok: bool, drained: bool, expired: bool) -> str:
        """Why a returned connection is closed instead of kept, for the log."""
        if broken:
            return "broken"
        if self._closed:
            return "pool closed"
        if not ok:
            return "failed reset"
        if drained:
            return "drained"
        if expired:
            return "expired"
        return "resized" if self._keeps_idle else "not kept"

    #: A borrower that waited longer than this many seconds is logged (WARNING); None: never.
    log_waits_over: float | None = 1.0
    #: At most one slow-wait line per this many seconds per pool: a saturated pool has a
    #: slow wait per borrow, and a line each would add load exactly when there is none to
    #: spare. The next line says how many were folded into it.
    log_waits_every: float = 10.0
    _slow_waits_unlogged = 0
    _slow_wait_longest = 0.0
    _slow_wait_logged_at = float("-inf")

    def lent(self) -> list[Loan]:
        """The connections lent now, longest held first: how long, by whom, from where.

        The borrowing thread is always known; stacks (and asyncio task names) are
        recorded with ``leak_timeout`` set.
        """
        return self._engine.lent()

    def _timeout_error(self, timeout: float) -> PoolError:
        """PoolTimeout saying how many are lent, the longest hold, and where it was borrowed."""
        engine = self._engine
        with engine.lock:
            raw = lent_locked(engine, engine.clock())
            max_size = engine.max_size
        return self._err(
            PoolTimeout,
            f"couldn't get a connection from pool {self.name!r} after {timeout:.2f} s:"
            f" {lent_summary(loans(raw[:1]), max_size, len(raw))}{self._last_error_hint()}",
        )

    def _log_slow_wait(self, waited: float) -> None:
        """Log a wait over ``log_waits_over``, at most once per ``log_waits_every`` seconds.

        Call it outside the lock.
        """
        threshold = self.log_waits_over
        if threshold is None or waited <= threshold:
            return
        engine = self._engine
        now = time.monotonic()
        with engine.lock:
            folded = self._slow_waits_unlogged
            longest = max(self._slow_wait_longest, waited)
            if now - self._slow_wait_logged_at < self.log_waits_every:
                self._slow_waits_unlogged = folded + 1
                self._slow_wait_longest = longest
                return
            self._slow_wait_logged_at = now
            self._slow_waits_unlogged = 0
            self._slow_wait_longest = 0.0
            waiting = len(engine.waiters)
            max_size = engine.max_size
        more = (
            f"; {folded} more waits over {threshold:g} s since the last such line, the longest"
            f" {longest:.2f} s"
            if folded
            else ""
        )
        logger.warning(
            "pool %r: a borrower waited %.2f s for a connection (max_size=%d, %d still"
            " waiting; see pool.lent() for who holds them)%s",
            self.name,
            waited,
            max_size,
            waiting,
            more,
        )

    def _last_error_hint(self) -> str:
        error = self._engine.last_connect_error
        return f"; last connection attempt failed: {hide_password(error)}" if error else ""

    def _not_lent_error(self, conn: Any) -> ValueError:
        return ValueError(
            f"conn ({type(conn).__name__} at {id(conn):#x}) was not lent by pool"
            f" {self.name!r}, or was already returned"
        )


class NullReports(Reports):
    """What the null pools report differently: an unbounded ``max_size`` as 0 (psycopg_pool's
    convention, the rule in ``_args.reported_max``), and why a return is closed."""

    _keeps_idle = False

    @property
    def max_size(self) -> int:
        return reported_max(self._engine.max_size)

    def _stats_locked(self) -> dict[str, int]:
        stats = super()._stats_locked()
        stats["pool_max"] = reported_max(stats["pool_max"])
        return stats
