"""Slow waits are logged, but a saturated pool doesn't log one line per borrower."""

from __future__ import annotations

import logging
import threading

import pytest

import psycopool


def _waiters(p: psycopool.ConnectionPool, n: int, hold: float) -> None:
    """``n`` threads queue behind a holder keeping the only connection ``hold`` seconds."""
    held = p.getconn(timeout=20)
    threads = [threading.Thread(target=lambda: p.putconn(p.getconn(timeout=20))) for _ in range(n)]
    for t in threads:
        t.start()
    threading.Event().wait(hold)
    p.putconn(held)
    for t in threads:
        t.join(20)
        assert not t.is_alive()


def test_slow_waits_are_folded_into_one_line_per_interval(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="psycopool")
    with psycopool.ConnectionPool(dsn, min_size=1, max_size=1, name="slow") as p:
        p.wait(timeout=20)
        p.log_waits_over = 0.05
        _waiters(p, 4, 0.3)  # four slow waits within one interval (10 s by default)
        lines = [r.getMessage() for r in caplog.records if "a borrower waited" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "more waits" not in lines[0]

        caplog.clear()
        p.log_waits_every = 0.0  # the next slow wait is logged, with what was folded
        _waiters(p, 1, 0.3)
        lines = [r.getMessage() for r in caplog.records if "a borrower waited" in r.getMessage()]
        assert len(lines) == 1, lines
        assert "3 more waits over 0.05 s since the last such line" in lines[0], lines[0]
        assert "'slow'" in lines[0]
