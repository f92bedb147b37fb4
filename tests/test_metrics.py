"""Observability: stats() on the drop-in, lent(), the Prometheus and OpenTelemetry exporters.

Every value read back is checked against what the test did (borrows, holds, waits, timeouts),
against the real server the suite starts.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from _clock import FakeClock

import psycopool
from psycopool import pool as dropin
from psycopool._timings import BOUNDS, Histogram

# -- the core, with no exporter ---------------------------------------------------------------


def test_import_psycopool_imports_no_exporter() -> None:
    code = (
        "import sys, psycopool, psycopool.pool\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('opentelemetry', 'prometheus_client') or m.startswith('psycopool.metrics')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_histogram_buckets_are_le() -> None:
    h = Histogram()
    h.add([BOUNDS[0], BOUNDS[0] * 1.01, 1e9], zeros=2)
    cumulative = h.cumulative()
    assert cumulative[0] == 3  # two zero-wait borrows and a value equal to the first bound
    assert cumulative[1] == 4
    assert cumulative[-2] == 4 and cumulative[-1] == 5  # 1e9 only in +Inf
    assert h.count == 5
    assert h.sum == pytest.approx(BOUNDS[0] * 2.01 + 1e9)


def test_no_timings_recorded_until_an_exporter_attaches(dsn: str) -> None:
    p = dropin.ThreadedConnectionPool(1, 2, dsn)
    try:
        p.putconn(p.getconn())
        engine = p._engine
        assert engine.timings is None and engine.use_times is None
    finally:
        p.closeall()


# -- the drop-in's stats() and lent() ---------------------------------------------------------


def test_dropin_stats_count_what_happened(dsn: str) -> None:
    p = dropin.ThreadedConnectionPool(1, 2, dsn)
    try:
        a = p.getconn()
        b = p.getconn()
        with pytest.raises(dropin.PoolError, match="exhausted"):
            p.getconn()
        stats = p.stats()
        assert stats["pool_min"] == 1 and stats["pool_max"] == 2
        assert stats["pool_size"] == 2 and stats["pool_available"] == 0
        assert stats["connections_in_use"] == 2
        assert stats["requests_errors"] == stats["requests_timeouts"] == 1
        assert stats["connections_num"] == 2 and stats["connections_errors"] == 0
        p.putconn(a)
        p.putconn(b, close=True)
        stats = p.stats()
        assert stats["connections_in_use"] == 0 and stats["pool_available"] == 1
        # The keys it shares with ConnectionPool.stats() mean the same there.
        with psycopool.ConnectionPool(dsn, min_size=1, max_size=2) as modern:
            shared = set(stats) - {"requests_timeouts"}
            assert shared <= set(modern.stats())
    finally:
        p.closeall()


def test_dropin_lent_says_how_long_and_under_which_key(dsn: str) -> None:
    clock = FakeClock()

    class Pool(dropin.ThreadedConnectionPool):
        pass

    Pool.clock = staticmethod(clock)  # type: ignore[method-assign]
    p = Pool(0, 3, dsn)
    try:
        p.getconn("first")
        clock.advance(5.0)
        p.getconn("second")
        clock.advance(1.5)
        loans = p.lent()
        assert [(loan.key, loan.held) for loan in loans] == [("first", 6.5), ("second", 1.5)]
        assert loans[0].stack is None and loans[0].borrower == "MainThread"
    finally:
        p.closeall()


# -- Prometheus ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def scrape() -> Iterator[Any]:
    """``scrape(registry)``: serve ``registry`` on a loopback port, GET /metrics, parse it."""
    from prometheus_client import start_http_server
    from prometheus_client.parser import text_string_to_metric_families

    servers = []

    def do_scrape(registry: Any) -> dict[str, Any]:
        if not servers:
            port = _free_port()
            servers.append((start_http_server(port, addr="127.0.0.1", registry=registry), port))
        port = servers[0][1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    yield do_scrape
    for (server, thread), _port in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _sample(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise AssertionError(f"no {sample}{labels} in {family}")


def test_prometheus_scrape_of_a_dropin(dsn: str, scrape: Any) -> None:
    from prometheus_client import CollectorRegistry

    from psycopool.metrics.prometheus import register

    registry = CollectorRegistry()
    p = dropin.ThreadedConnectionPool(1, 2, dsn)
    try:
        register(p, name="legacy", registry=registry)
        for _ in range(5):
            conn = p.getconn()
            time.sleep(0.003)
            p.putconn(conn)
        held = p.getconn()
        p.getconn()
        with pytest.raises(dropin.PoolError):
            p.getconn()
        families = scrape(registry)
        pool = {"pool": "legacy"}
        assert (
            _sample(
                families, "psycopool_connections_in_use", "psycopool_connections_in_use", **pool
            )
            == 2
        )
        assert _sample(families, "psycopool_pool_max", "psycopool_pool_max", **pool) == 2
        assert (
            _sample(
                families, "psycopool_requests_timeouts", "psycopool_requests_timeouts_total", **pool
            )
            == 1
        )
        # 7 borrows, none waited: all in the first wait bucket. 5 returns, each held >= 3 ms.
        assert (
            _sample(families, "psycopool_wait_seconds", "psycopool_wait_seconds_count", **pool) == 7
        )
        assert (
            _sample(
                families,
                "psycopool_wait_seconds",
                "psycopool_wait_seconds_bucket",
                le="0.0001",
                **pool,
            )
            == 7
        )
        assert (
            _sample(families, "psycopool_use_seconds", "psycopool_use_seconds_count", **pool) == 5
        )
        assert (
            _sample(
                families,
                "psycopool_use_seconds",
                "psycopool_use_seconds_bucket",
                le="0.0025",
                **pool,
            )
            == 0
        )
        assert (
            _sample(families, "psycopool_use_seconds", "psycopool_use_seconds_sum", **pool) >= 0.015
        )
        assert (
            _sample(
                families, "psycopool_longest_loan_seconds", "psycopool_longest_loan_seconds", **pool
            )
            > 0
        )
        p.putconn(held)
        families = scrape(registry)
        assert (
            _sample(families, "psycopool_use_seconds", "psycopool_use_seconds_count", **pool) == 6
        )
        assert (
            _sample(families, "psycopool_wait_seconds", "psycopool_wait_seconds_count", **pool) == 7
        )
    finally:
        p.closeall()


# -- OpenTelemetry ------------------------------------------------------------------------------


@pytest.fixture
def otel() -> Iterator[Any]:
    """``(provider, read)``: a MeterProvider with an InMemoryMetricReader; ``read()`` collects."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    def read() -> dict[str, Any]:
        data = reader.get_metrics_data()
        assert data is not None
        return {
            m.name: m
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            if sm.scope.name == "psycopool"
            for m in sm.metrics
        }

    yield provider, read
    provider.shutdown()


def _point(metric: Any, **attributes: str) -> Any:
    for point in metric.data.data_points:
        if all(point.attributes.get(k) == v for k, v in attributes.items()):
            return point
    raise AssertionError(f"no point with {attributes} in {metric.name}")


#: The conventions' instruments: name -> (OTel data type, monotonic, unit).
SEMCONV = {
    "db.client.connection.count": ("Sum", False, "{connection}"),
    "db.client.connection.idle.max": ("Sum", False, "{connection}"),
    "db.client.connection.idle.min": ("Sum", False, "{connection}"),
    "db.client.connection.max": ("Sum", False, "{connection}"),
    "db.client.connection.pending_requests": ("Sum", False, "{request}"),
    "db.client.connection.timeouts": ("Sum", True, "{timeout}"),
    "db.client.connection.create_time": ("Histogram", None, "s"),
    "db.client.connection.wait_time": ("Histogram", None, "s"),
    "db.client.connection.use_time": ("Histogram", None, "s"),
}


def test_otel_instruments_are_the_conventions(dsn: str, otel: Any) -> None:
    from psycopool.metrics.otel import instrument

    provider, read = otel
    p = dropin.ThreadedConnectionPool(2, 3, dsn)
    try:
        instrument(p, meter_provider=provider, name="legacy")
        with pytest.raises(ValueError, match="'legacy' is already instrumented"):
            instrument(p, meter_provider=provider, name="legacy")
        conns = [p.getconn() for _ in range(3)]  # 2 idle ones, then one opened
        time.sleep(0.002)
        p.putconn(conns.pop())
        with pytest.raises(dropin.PoolError, match="exhausted"):
            p.getconn()
            p.getconn()
        metrics = read()
        for name, (kind, monotonic, unit) in SEMCONV.items():
            metric = metrics[name]
            assert type(metric.data).__name__ == kind, name
            assert metric.unit == unit, name
            if monotonic is not None:
                assert metric.data.is_monotonic is monotonic, name
            for point in metric.data.data_points:
                assert point.attributes["db.client.connection.pool.name"] == "legacy"
        count = metrics["db.client.connection.count"]
        assert _point(count, **{"db.client.connection.state": "idle"}).value == 0
        assert _point(count, **{"db.client.connection.state": "used"}).value == 3
        assert _point(metrics["db.client.connection.max"]).value == 3
        assert _point(metrics["db.client.connection.idle.min"]).value == 2
        assert _point(metrics["db.client.connection.idle.max"]).value == 2  # psycopg2's rule
        assert _point(metrics["db.client.connection.pending_requests"]).value == 0
        assert _point(metrics["db.client.connection.timeouts"]).value == 1
        assert _point(metrics["db.client.connection.create_time"]).count == 1
        wait = _point(metrics["db.client.connection.wait_time"])
        assert wait.count == 4 and wait.bucket_counts[0] == 4  # none waited
        assert list(wait.explicit_bounds) == list(BOUNDS)
        use = _point(metrics["db.client.connection.use_time"])
        assert use.count == 1 and use.sum >= 0.002
        for conn in conns:
            p.putconn(conn)
        metrics = read()
        assert _point(metrics["db.client.connection.use_time"]).count == 3
        assert _point(metrics["db.client.connection.wait_time"]).count == 4
        assert _point(metrics["psycopool.connection.longest_use"]).value > 0  # the 4th borrow
    finally:
        p.closeall()


# -- the modern pool: waits, timeouts, who holds the connections ---------------------------------


def _hold_for(p: psycopool.ConnectionPool, seconds: float, ready: threading.Event) -> None:
    """Borrow a connection in a thread named 'holder', keep it ``seconds``, return it."""
    conn = p.getconn()
    ready.set()
    time.sleep(seconds)
    p.putconn(conn)


def _holder(p: psycopool.ConnectionPool, seconds: float) -> threading.Thread:
    ready = threading.Event()
    thread = threading.Thread(target=_hold_for, args=(p, seconds, ready), name="holder")
    thread.start()
    assert ready.wait(10)
    return thread


def test_pool_timeout_names_the_holder_and_its_stack(dsn: str) -> None:
    with psycopool.ConnectionPool(dsn, min_size=1, max_size=1, leak_timeout=60.0) as p:
        thread = _holder(p, 0.6)
        try:
            with pytest.raises(psycopool.PoolTimeout) as info:
                p.getconn(timeout=0.1)
            message = str(info.value)
            assert "1 of 1 connections lent, the longest for" in message
            assert "by holder" in message
            assert "in _hold_for" in message  # the borrower's stack
            (loan,) = p.lent()
            assert loan.borrower == "holder" and loan.held > 0 and "_hold_for" in (loan.stack or "")
            assert p.stats()["requests_timeouts"] == 1
        finally:
            thread.join(10)
        assert p.lent() == []


def test_pool_timeout_without_leak_tracking_says_how_to_get_the_holder(dsn: str) -> None:
    with psycopool.ConnectionPool(dsn, min_size=1, max_size=1) as p:
        conn = p.getconn()
        with pytest.raises(
            psycopool.PoolTimeout, match=r"1 of 1 connections lent.* by MainThread .*leak_timeout"
        ):
            p.getconn(timeout=0.05)
        (loan,) = p.lent()
        assert loan.borrower == "MainThread" and loan.stack is None
        p.putconn(conn)


def test_otel_and_prometheus_on_a_modern_pool(dsn: str, otel: Any, scrape: Any) -> None:
    from prometheus_client import CollectorRegistry

    from psycopool.metrics.otel import instrument
    from psycopool.metrics.prometheus import register

    provider, read = otel
    registry = CollectorRegistry()
    with psycopool.ConnectionPool(dsn, min_size=1, max_size=1, name="modern") as p:
        p.wait()
        instrument(p, meter_provider=provider)
        register(p, registry=registry)
        for _ in range(3):
            with p.connection():
                pass
        thread = _holder(p, 0.4)
        try:
            with pytest.raises(psycopool.PoolTimeout):
                p.getconn(timeout=0.05)
            waiter_done = threading.Event()
            waited = threading.Thread(
                target=lambda: (p.putconn(p.getconn(timeout=10)), waiter_done.set())
            )
            waited.start()
            deadline = time.monotonic() + 5
            while not p.stats()["requests_waiting"] and time.monotonic() < deadline:
                time.sleep(0.005)
            metrics = read()
            assert _point(metrics["db.client.connection.pending_requests"]).value == 1
            assert _point(metrics["db.client.connection.timeouts"]).value == 1
            assert _point(metrics["psycopool.connection.longest_use"]).value > 0
        finally:
            thread.join(10)
            waited.join(10)
        assert waiter_done.is_set()
        # 5 borrows: 3 + the holder's immediate, 1 that waited ~0.3 s; the timeout is no borrow.
        metrics = read()
        wait = _point(metrics["db.client.connection.wait_time"])
        assert wait.count == 5
        assert wait.bucket_counts[0] == 4
        assert wait.max >= 0.1 and 0.1 <= wait.sum < 10
        use = _point(metrics["db.client.connection.use_time"])
        assert use.count == 5 and use.max >= 0.3
        families = scrape(registry)
        pool = {"pool": "modern"}
        assert (
            _sample(families, "psycopool_wait_seconds", "psycopool_wait_seconds_count", **pool) == 5
        )
        assert (
            _sample(
                families,
                "psycopool_wait_seconds",
                "psycopool_wait_seconds_bucket",
                le="0.1",
                **pool,
            )
            == 4
        )
        assert (
            _sample(families, "psycopool_use_seconds", "psycopool_use_seconds_count", **pool) == 5
        )
        assert (
            _sample(families, "psycopool_requests_num", "psycopool_requests_num_total", **pool) == 6
        )
        assert (
            _sample(
                families, "psycopool_requests_timeouts", "psycopool_requests_timeouts_total", **pool
            )
            == 1
        )
        assert (
            _sample(
                families, "psycopool_longest_loan_seconds", "psycopool_longest_loan_seconds", **pool
            )
            == 0
        )


# -- logging -------------------------------------------------------------------------------------


def test_log_lines_levels_reasons_and_no_password(
    dsn: str, pg_server: Any, app_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    password = "s3cr3t-pw-never-logged"
    port = _free_port()  # nothing listens there
    attempts = []

    def kwargs() -> dict[str, Any]:
        attempts.append(1)
        return (
            {"port": port, "password": password} if len(attempts) <= 2 else {"password": password}
        )

    caplog.set_level("DEBUG", logger="psycopool")
    with psycopool.ConnectionPool(dsn, kwargs=kwargs, min_size=1, max_size=1, name="logged") as p:
        p.wait(timeout=20)
        # Dead: the server ends the idle connection; the next borrow discards it.
        pg_server.terminate(app_name)
        # Failed reset: ended mid-transaction while lent; the return's rollback fails.
        conn = p.getconn(timeout=20)
        conn.cursor().execute("SELECT 1")
        pg_server.terminate(app_name)
        p.putconn(conn)
        # A slow wait.
        p.log_waits_over = 0.05
        thread = _holder(p, 0.3)
        p.putconn(p.getconn(timeout=20))
        thread.join(10)
        p.drain()
    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "psycopool"]
    text = "\n".join(m for _, m in records)
    assert password not in text
    assert all("'logged'" in m for _, m in records), text

    def has(level: str, fragment: str) -> bool:
        return any(lv == level and fragment in m for lv, m in records)

    assert has("WARNING", "connection attempt 1 failed"), text
    assert has("INFO", "connected again after 2 failed attempts"), text
    assert has("DEBUG", "opened a connection in"), text
    assert has("INFO", "discarding 1 connection (dead)"), text
    assert has("INFO", "discarding 1 connection (failed reset)"), text
    assert has("WARNING", "a borrower waited"), text
    assert has("DEBUG", "closing 1 connection (drained)"), text


# -- the asyncio pool ----------------------------------------------------------------------------


def test_async_pool_timeout_names_the_task_and_metrics_count_its_borrows(dsn: str) -> None:
    import asyncio

    from _async import run_on
    from prometheus_client import CollectorRegistry

    from psycopool.metrics.prometheus import register

    registry = CollectorRegistry()
    keep = []  # the collector holds pools weakly: keep this one for the scrape below

    async def main() -> None:
        pool = psycopool.AsyncConnectionPool(
            dsn, min_size=1, max_size=1, leak_timeout=60.0, name="aio", open=False
        )
        keep.append(pool)
        await pool.open(wait=True)
        try:
            register(pool, registry=registry)
            for _ in range(3):
                async with pool.connection():
                    pass

            async def hold_async() -> Any:
                return await pool.getconn()

            conn = await asyncio.create_task(hold_async(), name="holding-task")
            with pytest.raises(psycopool.PoolTimeout) as info:
                await pool.getconn(timeout=0.05)
            assert "by task holding-task" in str(info.value)
            assert "in hold_async" in str(info.value)
            (loan,) = pool.lent()
            assert loan.borrower == "task holding-task"
            await pool.putconn(conn)
        finally:
            await pool.close()

    run_on("asyncio", main)
    families = {f.name: f for f in registry.collect()}
    pool = {"pool": "aio"}
    assert _sample(families, "psycopool_use_seconds", "psycopool_use_seconds_count", **pool) == 4
    assert _sample(families, "psycopool_wait_seconds", "psycopool_wait_seconds_count", **pool) == 4
    assert (
        _sample(
            families, "psycopool_requests_timeouts", "psycopool_requests_timeouts_total", **pool
        )
        == 1
    )


def test_otel_thins_samples_above_its_rate_cap_and_says_so(
    dsn: str, otel: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopool.metrics.otel as otel_module

    provider, read = otel
    monkeypatch.setattr(otel_module, "MAX_RECORDS_PER_FLUSH", 4)
    p = dropin.ThreadedConnectionPool(1, 1, dsn)
    try:
        otel_module.instrument(p, meter_provider=provider, name="busy")
        for _ in range(10):
            p.putconn(p.getconn())
        with caplog.at_level("WARNING", logger="psycopool"):
            metrics = read()
        assert _point(metrics["db.client.connection.use_time"]).count == 4  # 1 in 3 kept
        assert _point(metrics["db.client.connection.wait_time"]).count == 3
        assert "keep 1 in 3" in caplog.text
    finally:
        p.closeall()
