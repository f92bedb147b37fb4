"""A frozen server: every PostgreSQL process stopped (SIGSTOP), then resumed (SIGCONT).

Unlike a cut network, the server's kernel still acknowledges everything: TCP sees a healthy
peer. What the application must see: borrowers holding a connection wait in their query and get
their answer after the thaw (``network_timeout`` does not cut them: it only fires when nothing
is acknowledged, which makes it safe as a default), borrowers without one get ``PoolTimeout``
after their timeout, work resumes within a second of the thaw, and ``close()`` returns in time
even while the server is frozen.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from _fault import Worker, outcome, wait_until
from _netns import frozen

pytestmark = pytest.mark.slow

DRIVERS = ["psycopg2", "psycopg"]
_apps = itertools.count(1)


class Frozen:
    def __init__(self, server: Any) -> None:
        self.server = server
        self._admin: Any = None

    def count(self, app: str) -> int:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg2.connect(self.server.dsn)
            self._admin.autocommit = True
        with self._admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND backend_type = 'client backend'",
                (app,),
            )
            n: int = cur.fetchone()[0]
        return n


@pytest.fixture(scope="module")
def server() -> Iterator[Frozen]:
    """A server of its own: freezing the session's server would stall other fixtures."""
    from psycopool._server import PgBinNotFound, TempServer

    temp = TempServer(max_connections=40)
    try:
        try:
            temp.start()
        except PgBinNotFound as exc:
            pytest.skip(f"no PostgreSQL server for the tests: {exc}")
        handle = Frozen(temp)
        yield handle
        if handle._admin is not None:
            handle._admin.close()
    finally:
        temp.cleanup()


def start_worker(server: Frozen, driver: str, **config: Any) -> tuple[Worker, str]:
    app = f"psycopool-frozen-{next(_apps)}"
    worker = Worker(
        {
            "impl": "psycopool",
            "driver": driver,
            "conninfo": f"{server.server.dsn} application_name={app}",
            "threads": 6,
            "borrow_timeout": 2.0,
            "pause": 0.02,
            **config,
        }
    )
    worker.expect("ready", 30)
    return worker, app


@pytest.mark.parametrize("driver", DRIVERS)
def test_frozen_server(server: Frozen, driver: str) -> None:
    # network_timeout (2 s) is shorter than the freeze (5 s): it must not end any connection.
    worker, app = start_worker(
        server, driver, pool={"min_size": 4, "max_size": 4, "network_timeout": 2.0}
    )
    try:
        time.sleep(0.5)
        with frozen(server.server.data_dir):
            frozen_at = time.monotonic()
            time.sleep(5)
        thawed_at = time.monotonic()
        time.sleep(2)
        size = worker.send("stats", "stats", 10)["stats"]["pool_size"]
        assert (server.count(app), size) == (4, 4)
        closed = worker.send("close 2", "closed", 30)
    finally:
        worker.kill()
    result = outcome(closed["ops"], frozen_at, thawed_at, threads=6, until=closed["t"])
    print(f"{driver}: {result}")
    # Two borrowers had no connection: PoolTimeout after their 2 s. No connection was lost.
    assert result.error_classes() == {"PoolTimeout"}
    assert result.first_error is not None and 1.5 <= result.first_error <= 4.0
    # The four holding a connection got their answer after the thaw, not an error.
    assert 4.5 <= result.longest_op <= 8.0
    assert result.recovery is not None and result.recovery <= 2.0
    assert closed["duration"] < 1.5
    assert wait_until(lambda: server.count(app) == 0, 10)


@pytest.mark.parametrize("driver", DRIVERS)
def test_close_while_frozen(server: Frozen, driver: str) -> None:
    worker, app = start_worker(server, driver, threads=4, pool={"min_size": 4})
    try:
        time.sleep(0.5)
        with frozen(server.server.data_dir):
            time.sleep(1)
            closed = worker.send("close 1", "closed", 30)
    finally:
        worker.kill()
    print(f"{driver}: close took {closed['duration']:.2f} s")
    assert closed["duration"] < 3.0
    assert closed["stuck"] == 0
    assert wait_until(lambda: server.count(app) == 0, 10)


def test_async_ping_and_close_bounded_while_frozen(server: Frozen) -> None:
    """The asyncio pool: a ping on a frozen server ends by the pool's timeout; close() returns."""
    import asyncio

    from psycopool import AsyncConnectionPool, PoolTimeout

    app = f"psycopool-frozen-{next(_apps)}"

    async def main() -> tuple[float, float, float]:
        pool = AsyncConnectionPool(
            f"{server.server.dsn} application_name={app}", min_size=2, check="ping", timeout=1.5
        )
        await pool.open(wait=True)
        lent = await pool.getconn()
        busy = asyncio.ensure_future(lent.execute("SELECT pg_sleep(0.2)"))
        await asyncio.sleep(0.05)
        with frozen(server.server.data_dir):
            started = time.monotonic()
            await pool.check()  # pings the idle connection: ends by the pool's timeout
            checked = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=1.5)
            got = time.monotonic() - started
            started = time.monotonic()
            await pool.close(timeout=1)
            closed = time.monotonic() - started
        await asyncio.gather(busy, return_exceptions=True)
        return got, checked, closed

    got, checked, closed = asyncio.run(main())
    print(f"async: getconn {got:.2f} s, check {checked:.2f} s, close {closed:.2f} s")
    assert got < 1.5 + 1.0
    assert 1.0 < checked < 1.5 + 1.0  # it did wait for an answer, then gave up
    assert closed < 1 + 2.0
    assert wait_until(lambda: server.count(app) == 0, 10)
