"""Forking servers: a pool made before the fork connects in the workers only (open="lazy").

Real gunicorn with --preload (the app, and its pool, are imported in the master before it
forks), sync and gthread workers, on 127.0.0.1 and a free port. Every connection's
application_name carries the pid of the process that opened it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from _modern import pid_of

from psycopool import ConnectionPool

pytest.importorskip("gunicorn")

APP_DIR = Path(__file__).resolve().parent / "forking_app"
SRC = Path(__file__).resolve().parent.parent / "src"
WORKERS = 2
REQUESTS = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


class Gunicorn:
    """A gunicorn server this test started (its own process group), killed at teardown."""

    def __init__(self, worker_class: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        argv = [
            sys.executable, "-m", "gunicorn", "--preload",
            "--workers", str(WORKERS), "--worker-class", worker_class,
            "--threads", "4", "--bind", f"127.0.0.1:{self.port}",
            "--graceful-timeout", "5", "--log-level", "warning", "wsgi:app",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            cwd=APP_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}/"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited: {self.output()}")
            try:
                _get(self.url)
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("gunicorn did not answer in time")

    def output(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # graceful: workers finish, then exit
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test created
                self.proc.wait(5)


@pytest.fixture
def env(pg_server: Any, app_name: str) -> dict[str, str]:
    values = dict(os.environ)
    values.update(
        PSYCOPOOL_FORK_DSN=pg_server.dsn,
        PSYCOPOOL_FORK_APP_NAME=app_name[:40],
        PYTHONPATH=os.pathsep.join(p for p in (str(SRC), values.get("PYTHONPATH")) if p),
    )
    return values


def _connections(pg_server: Any, prefix: str) -> dict[int, str]:
    """Server pid -> application_name of every client backend whose name starts with prefix."""
    admin = pg_server.admin_connect()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pid, application_name FROM pg_stat_activity"
                " WHERE application_name LIKE %s AND backend_type = 'client backend'",
                (prefix + "-%",),
            )
            return dict(cur.fetchall())
    finally:
        admin.close()


@pytest.mark.parametrize(("worker_class", "driver"), [("sync", "psycopg2"), ("gthread", "psycopg")])
def test_gunicorn_preload(
    pg_server: Any, env: dict[str, str], worker_class: str, driver: str
) -> None:
    env["PSYCOPOOL_FORK_DRIVER"] = driver
    prefix = env["PSYCOPOOL_FORK_APP_NAME"]
    server = Gunicorn(worker_class, env)
    try:
        server.wait_ready()
        with ThreadPoolExecutor(8) as executor:
            bodies = list(executor.map(lambda _: _get(server.url), range(REQUESTS)))
        on_server = _connections(pg_server, prefix)
        master = server.proc.pid
    finally:
        server.stop()
    assert len(bodies) == REQUESTS  # every request answered 200 (urlopen raises otherwise)
    owners: dict[int, int] = {}
    for body in bodies:
        worker, backend, name = body.split()
        assert name == f"{prefix}-{worker}"  # the worker's own connection, opened by it
        assert owners.setdefault(int(backend), int(worker)) == int(worker)  # never shared
    assert master not in owners.values()
    # The master made the pool but never connected; each worker holds at most max_size.
    names = list(on_server.values())
    assert f"{prefix}-{master}" not in names
    assert len(names) <= WORKERS * 2
    for worker in set(owners.values()):
        assert names.count(f"{prefix}-{worker}") <= 2
    deadline = time.monotonic() + 10
    while _connections(pg_server, prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _connections(pg_server, prefix) == {}  # workers gone, connections gone


def test_lazy_pool_opens_in_each_process(pg_server: Any, app_name: str, dsn: str) -> None:
    pool = ConnectionPool(dsn, min_size=2, max_size=2, open="lazy")
    try:
        time.sleep(0.2)
        assert pg_server.count(app_name) == 0 and pool.closed
        pid = os.fork()
        if pid == 0:  # the child: borrows, which opens the pool here
            code = 1
            try:
                with pool.connection(timeout=10) as conn:
                    pid_of(conn)
                code = 0 if not pool.closed else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert pg_server.wait_count(app_name, 0) == 0  # the child's ended with it
        assert pool.closed  # still unopened in the parent
        with pool.connection(timeout=10) as conn:  # the parent's first borrow opens it here
            pid_of(conn)
        assert not pool.closed
        assert pg_server.wait_count(app_name, 2) == 2  # min_size, in the parent now
    finally:
        pool.close()
    assert pg_server.wait_count(app_name, 0) == 0


def test_one_pool_failing_after_fork_leaves_the_others_safe(
    pg_server: Any, app_name: str, dsn: str
) -> None:
    class Broken(ConnectionPool):
        def _after_fork(self) -> None:
            raise RuntimeError("broken after fork")

    broken = Broken(dsn, min_size=0, max_size=1, open=False)
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        with pool.connection(timeout=10) as conn:
            parent = pid_of(conn)
        pid = os.fork()
        if pid == 0:  # the child must open its own connection, not use the parent's
            code = 1
            try:
                with pool.connection(timeout=10) as conn:
                    code = 0 if pid_of(conn) != parent else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with pool.connection(timeout=10) as conn:
            assert pid_of(conn) == parent  # the parent's session is intact
    broken.close()


def test_open_argument_is_checked() -> None:
    with pytest.raises(ValueError, match="open must be True, False or 'lazy'; got 'yes'"):
        ConnectionPool("", open="yes")  # type: ignore[arg-type]
