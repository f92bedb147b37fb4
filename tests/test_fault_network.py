"""A silently cut network, for real: the pool in one network namespace, PostgreSQL in another.

The test makes both namespaces, joins them with a veth pair whose addresses it assigns there
(``_netns.py``), starts a dedicated server inside the server namespace and runs a pool under
load in the client namespace (``_fault_worker.py``, a subprocess reporting JSON). The cut
replaces both ends' neighbour entries with bogus MAC addresses: no reset, no error, packets just
vanish, as when a switch dies. Each test asserts what the application saw (which errors, how
soon after the cut), how soon after the network came back every thread worked again, that the
server ends with as many connections as the pool counts, and that ``close()`` returned in time.

``network_timeout`` is set to 3 s here (the default is 10 s, the same mechanism) so that the
suite stays short; ``tools/fault_measure.py`` measures the defaults with a 20 s cut.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from _fault import Outcome, Worker, outcome, wait_until
from _netns import NetPair, NsServer, unavailable_reason

pytestmark = pytest.mark.slow

DRIVERS = ["psycopg2", "psycopg"]
NETWORK_TIMEOUT = 3.0
_apps = itertools.count(1)


class Net:
    """The namespaces, the server inside, and an admin connection through its Unix socket."""

    def __init__(self, net: NetPair, server: Any) -> None:
        self.net = net
        self.server = server
        self._admin: Any = None

    def count(self, app: str) -> int:
        if self._admin is None or self._admin.closed:
            self._admin = psycopg2.connect(self.server.socket_dsn)
            self._admin.autocommit = True
        with self._admin.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND backend_type = 'client backend'",
                (app,),
            )
            n: int = cur.fetchone()[0]
        return n

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with NetPair() as pair, NsServer(pair) as ns_server:
        handle = Net(pair, ns_server.server)
        try:
            yield handle
        finally:
            handle.close()


def start_worker(net: Net, driver: str, **config: Any) -> tuple[Worker, str]:
    app = f"psycopool-netfault-{next(_apps)}"
    config = {
        "impl": "psycopool",
        "driver": driver,
        "conninfo": f"{net.server.dsn} application_name={app}",
        "threads": 4,
        "borrow_timeout": 2.0,
        "pause": 0.02,
        **config,
    }
    worker = Worker(config, prefix=net.net.exec_prefix("cli"))
    worker.expect("ready", 30)
    return worker, app


def counts_agree(net: Net, worker: Worker, app: str, timeout: float) -> tuple[int, int]:
    """Wait until the server's count for ``app`` equals the pool's size; both, last seen."""
    seen = (-1, -2)

    def agree() -> bool:
        nonlocal seen
        size = worker.send("stats", "stats", 10)["stats"]["pool_size"]
        seen = (net.count(app), size)
        return seen[0] == seen[1]

    wait_until(agree, timeout, step=0.25)
    return seen


@pytest.mark.parametrize("driver", DRIVERS)
def test_silent_cut(net: Net, driver: str) -> None:
    worker, app = start_worker(
        net, driver, pool={"min_size": 4, "max_size": 4, "network_timeout": NETWORK_TIMEOUT}
    )
    try:
        time.sleep(0.5)
        cut_at = time.monotonic()
        net.net.cut()
        try:
            time.sleep(6)
        finally:
            net.net.restore()
        restored_at = time.monotonic()
        time.sleep(3)
        assert counts_agree(net, worker, app, 10) == (4, 4)  # the server reaped the orphans
        closed = worker.send("close 2", "closed", 30)
    finally:
        worker.kill()
    result: Outcome = outcome(closed["ops"], cut_at, restored_at, threads=4, until=closed["t"])
    print(f"{driver}: {result}")
    # Queries hung on the cut end with the driver's error once network_timeout has passed;
    # borrowers then wait for a new connection and get PoolTimeout. Nothing else.
    assert result.first_error is not None
    assert NETWORK_TIMEOUT - 0.5 <= result.first_error <= NETWORK_TIMEOUT + 3
    assert result.error_classes() <= {"OperationalError", "PoolTimeout"}
    assert "OperationalError" in result.error_classes()
    assert result.longest_op <= NETWORK_TIMEOUT + 3  # no thread hung for the whole cut
    assert result.recovery is not None and result.recovery <= 5.0
    assert closed["duration"] < 1.5
    assert closed["stuck"] == 0
    assert wait_until(lambda: net.count(app) == 0, 10)


@pytest.mark.parametrize("driver", DRIVERS)
def test_close_during_cut_returns(net: Net, driver: str) -> None:
    # No keepalives: borrowers stay stuck in their queries. close() must still return in
    # time (psycopg2's close() would wait for the stuck query's lock) and free them.
    worker, app = start_worker(net, driver, pool={"min_size": 4, "network_timeout": None})
    try:
        time.sleep(0.5)
        net.net.cut()
        try:
            time.sleep(1.5)
            closed = worker.send("close 1", "closed", 30)
        finally:
            net.net.restore()
    finally:
        worker.kill()
    print(f"{driver}: close took {closed['duration']:.2f} s")
    assert closed["duration"] < 3.0
    assert closed["stuck"] == 0  # every stuck borrower got an error and moved on
    assert wait_until(lambda: net.count(app) == 0, 10)  # the shut sockets ended the sessions


@pytest.mark.parametrize("driver", DRIVERS)
def test_ping_and_check_are_bounded(net: Net, driver: str) -> None:
    # check="ping" on a cut network, keepalives off: getconn(timeout) and check() still end.
    worker, app = start_worker(
        net,
        driver,
        threads=0,
        pool={"min_size": 2, "check": "ping", "timeout": 2.0, "network_timeout": None},
    )
    try:
        net.net.cut()
        try:
            checked = worker.send("check", "check", 30)  # pings both idle connections
            got = worker.send("getconn 2", "getconn", 30)
        finally:
            net.net.restore()
        recovered = worker.send("getconn 10", "getconn", 30)
        assert counts_agree(net, worker, app, 10)[0] == 2
        worker.send("close 2", "closed", 30)
    finally:
        worker.kill()
    print(f"{driver}: getconn {got}, check {checked}, after {recovered}")
    assert got["error"] == "PoolTimeout"
    assert got["duration"] < 2 + 1.5
    assert checked["duration"] < 2 + 1.5
    assert checked["duration"] > 1.5  # it did wait for an answer: there were pings to bound
    assert recovered["error"] is None
    assert recovered["duration"] < 6
