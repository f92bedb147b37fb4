"""Real deployment topologies for the tests: PgBouncer in front of a server, a streaming standby.

- :class:`PgBouncer` runs ``pgbouncer`` (Debian's package, ``.ci/run`` installs it) in the
  foreground, as the server's unprivileged user when we are root (it refuses to run as root),
  on a free port of 127.0.0.1, in session or transaction pooling mode.
- :func:`new_primary` starts a throwaway cluster; :class:`Standby` clones one with
  ``pg_basebackup -R -X stream`` and runs it as a hot standby; :meth:`Standby.promote` makes it
  the primary.

Everything lives in a temporary folder under /tmp owned by that user, and is removed by
``cleanup()`` (the servers' ``atexit`` hook catches what a killed test leaves behind).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from psycopool._server import (
    TempServer,
    _free_port,
    _live,
    _live_lock,
    _run,
    _server_user,
    _tail,
)

REQUIRE_ENV = "PSYCOPOOL_REQUIRE_SERVER"
_START_TIMEOUT = 15.0


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_pgbouncer() -> str:
    """The pgbouncer binary; skip the test when there is none, fail instead in CI.

    CI (``.ci/run``) installs it and sets ``PSYCOPOOL_REQUIRE_SERVER=1``: a missing binary there
    is a broken CI, not a reason to skip.
    """
    binary = find_pgbouncer()
    if binary is None:
        message = (
            "pgbouncer is not installed (Debian/Ubuntu: `apt-get install -y pgbouncer`; "
            ".ci/run installs it)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_ENV}=1", pytrace=False)
        pytest.skip(message)
    return binary


def _wait_connectable(dsn: str, timeout: float, alive: Any) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg2.connect(dsn, connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if not alive() or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class PgBouncer:
    """One pgbouncer process in front of ``host:port`` (every database), ``pool_mode`` given.

    Trust authentication; user ``postgres`` is also an admin (the ``pgbouncer`` database).
    """

    def __init__(
        self,
        server_port: int,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 20,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.server_port = server_port
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.extra = dict(extra or {})
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._base: Path | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres"

    @property
    def log(self) -> str:
        if self._base is None:
            return ""
        try:
            return (self._base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> PgBouncer:
        binary = require_pgbouncer()
        user = _server_user()
        self._base = base = Path(tempfile.mkdtemp(prefix="psycopool-bouncer-", dir="/tmp"))
        (base / "userlist.txt").write_text('"postgres" ""\n')
        for attempt in range(3):
            self.port = _free_port()
            settings = {
                "listen_addr": "127.0.0.1",
                "listen_port": str(self.port),
                "unix_socket_dir": "",
                "auth_type": "trust",
                "auth_file": str(base / "userlist.txt"),
                "admin_users": "postgres",
                "pool_mode": self.pool_mode,
                "default_pool_size": str(self.pool_size),
                "max_client_conn": "2000",
                "logfile": str(base / "pgbouncer.log"),
                "pidfile": str(base / "pgbouncer.pid"),
                "server_login_retry": "1",
                **self.extra,
            }
            lines = ["[databases]", f"* = host=127.0.0.1 port={self.server_port}", "[pgbouncer]"]
            lines += [f"{key} = {value}" for key, value in settings.items()]
            (base / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
            if user is not None:  # the folder and every file in it: pgbouncer's
                for path in (base, *base.iterdir()):
                    os.chown(path, user.pw_uid, user.pw_gid)
            kwargs: dict[str, Any] = {}
            if user is not None:
                kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            self._proc = subprocess.Popen(
                [binary, str(base / "pgbouncer.ini")],
                cwd=base,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **kwargs,
            )
            try:
                _wait_connectable(self.dsn, _START_TIMEOUT, self.is_running)
                return self
            except psycopg2.OperationalError:
                log = self.log
                self._terminate()
                if "Address already in use" in log and attempt < 2:
                    continue
                self.cleanup()
                raise RuntimeError(f"pgbouncer did not start:\n{_tail(log)}") from None
        raise AssertionError("unreachable")

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run one command on the admin console (``SHOW POOLS``, ``PAUSE``, ``RECONNECT``...)."""
        conn = psycopg2.connect(
            f"host=127.0.0.1 port={self.port} dbname=pgbouncer user=postgres", connect_timeout=5
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(command)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: immediate shutdown
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def cleanup(self) -> None:
        try:
            self._terminate()
        finally:
            base, self._base = self._base, None
            if base is not None:
                shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<PgBouncer {self.pool_mode} port={self.port} -> {self.server_port}>"


def new_primary(max_connections: int = 100) -> TempServer:
    """A fresh throwaway cluster, started; it can stream to standbys (initdb's defaults)."""
    server = TempServer(max_connections=max_connections)
    server.start()
    return server


class Standby(TempServer):
    """A hot standby of ``primary``: ``pg_basebackup -R -X stream``, then started on a free port."""

    def __init__(self, primary: TempServer) -> None:
        super().__init__(max_connections=primary.max_connections, pg_bin=primary.bin_dir)
        self.primary = primary

    def _create(self) -> None:
        user = _server_user()
        bin_dir = self.primary.bin_dir
        if bin_dir is None or not (bin_dir / "pg_basebackup").is_file():
            pytest.skip(f"no pg_basebackup next to the server binaries ({bin_dir})")
        self._user = user
        self._bin = bin_dir
        base = Path(tempfile.mkdtemp(prefix="psycopool-pg-", dir="/tmp"))
        self._base = base
        with _live_lock:
            _live.add(self)
        if user is not None:
            os.chown(base, user.pw_uid, user.pw_gid)
        argv = [str(bin_dir / "pg_basebackup"), "-D", str(base / "data"), "-R", "-X", "stream"]
        argv += ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"]
        argv += ["--checkpoint=fast", "--no-sync"]
        result = _run(user, argv, cwd=base, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"pg_basebackup failed (exit {result.returncode}):\n{_tail(result.stdout)}"
            )

    def promote(self) -> float:
        """``pg_ctl promote -w``: returns once it accepts writes; the monotonic time it did."""
        assert self._bin is not None and self.base_dir is not None
        argv = [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "30", "promote"]
        result = _run(self._user, argv, cwd=self.base_dir, timeout=40)
        done = time.monotonic()
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl promote failed:\n{_tail(result.stdout)}")
        return done

    def wait_streaming(self, timeout: float = 15.0) -> None:
        """Wait until the primary reports this standby as streaming."""
        deadline = time.monotonic() + timeout
        while True:
            conn = psycopg2.connect(self.primary.dsn)
            try:
                with conn.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                    )
                    row = cur.fetchone()
            finally:
                conn.close()
            if row and row[0] >= 1:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"standby not streaming after {timeout} s")
            time.sleep(0.05)


def server_conninfo(*servers: TempServer, **params: str) -> str:
    """A libpq multi-host conninfo over ``servers`` (in order) plus ``params``."""
    hosts = ",".join("127.0.0.1" for _ in servers)
    ports = ",".join(str(s.port) for s in servers)
    extra = " ".join(f"{key}={value}" for key, value in params.items())
    return f"host={hosts} port={ports} dbname=postgres user=postgres {extra}".strip()


@contextlib.contextmanager
def cleaning(*things: Any) -> Any:
    """Yield, then ``cleanup()`` every thing given (servers, bouncers), whatever happened."""
    try:
        yield things
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.cleanup()
