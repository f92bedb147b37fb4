"""Start a throwaway PostgreSQL cluster for the test suite and ``python -m psycopool bench``.

Private module, standard library only. Where the binaries come from, and how they run as an
unprivileged user when the process is root, is in :mod:`psycopool._server_bin`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from psycopool._server_bin import (
    PgBinNotFound,
    _reachable_bin,
    _run,
    _server_user,
    _tmp_root,
    find_pg_bin,
)

__all__ = ["PgBinNotFound", "TempServer", "find_pg_bin"]

_MAX_SOCKET_PATH = 107
_LOG_TAIL_LINES = 30
_START_TIMEOUT = 30


# ---------------------------------------------------------------------------------------------
# The server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


_live: set[TempServer] = set()
_live_lock = threading.Lock()


@atexit.register
def _cleanup_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        with contextlib.suppress(Exception):
            server.cleanup()


class TempServer:
    """A throwaway PostgreSQL cluster in a temporary folder under /tmp, on 127.0.0.1.

    ``start()`` runs initdb on first use, then starts the server on a free port (or ``port``);
    ``restart()`` keeps the port and the data. ``cleanup()`` stops it and deletes every file;
    an ``atexit`` hook cleans up servers left over. Trust authentication, superuser ``postgres``.

    Fault tests may choose the listen address (``host``), run the server's commands behind a
    ``prefix`` (``("ip", "netns", "exec", name)`` starts it inside a network namespace) and add
    server ``settings``; :attr:`socket_dsn` reaches it through its Unix socket from anywhere.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 200,
        pg_bin: Path | None = None,
        host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),
        settings: dict[str, str] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.host = host
        self._prefix = tuple(prefix)
        self._settings = dict(settings or {})
        self._port = port
        self._pg_bin = pg_bin
        self._bin: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._base: Path | None = None
        self._lock = threading.RLock()

    # -- properties -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def dsn(self) -> str:
        return f"host={self.host} port={self.port} dbname=postgres user=postgres"

    @property
    def socket_dsn(self) -> str:
        """The same server through its Unix socket (reachable from any network namespace)."""
        return f"host={self._require_base()} port={self.port} dbname=postgres user=postgres"

    @property
    def base_dir(self) -> Path | None:
        """The temporary folder holding data, socket and log (None before start / after cleanup)."""
        return self._base

    @property
    def data_dir(self) -> Path:
        return self._require_base() / "data"

    @property
    def log_file(self) -> Path:
        return self._require_base() / "server.log"

    @property
    def bin_dir(self) -> Path | None:
        """The folder the binaries actually run from (maybe a reachable copy)."""
        return self._bin

    @property
    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and _pid_alive(pid)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            if self.is_running:
                return
            fresh = self._base is None
            try:
                if fresh:
                    self._create()
                self._start_server()
            except BaseException:
                if fresh:
                    self.cleanup()
                raise

    def stop(self) -> None:
        """Stop at once (``pg_ctl -m immediate``): clients see their connections die."""
        with self._lock:
            if self._base is None or self._bin is None:
                return
            pid = self._postmaster_pid()
            if pid is None or not _pid_alive(pid):
                return
            argv = [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate"]
            argv += ["-w", "-t", str(_START_TIMEOUT), "stop"]
            try:
                _run(
                    self._user,
                    argv,
                    cwd=self._base,
                    timeout=_START_TIMEOUT + 10,
                    prefix=self._prefix,
                )
            except (OSError, subprocess.SubprocessError):
                pass
            if _pid_alive(pid):
                self._kill(pid)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same data."""
        with self._lock:
            if self._base is None:
                raise RuntimeError("the server has not been started")
            self.stop()
            self._start_server()

    def cleanup(self) -> None:
        """Stop if running and delete all files. Safe to call more than once."""
        with self._lock:
            try:
                self.stop()
            finally:
                base, self._base = self._base, None
                if base is not None:
                    shutil.rmtree(base, ignore_errors=True)
                with _live_lock:
                    _live.discard(self)

    def __enter__(self) -> TempServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"<TempServer port={self._port} {state} base={self._base}>"

    # -- internals --------------------------------------------------------------------------

    def _require_base(self) -> Path:
        if self._base is None:
            raise RuntimeError("the server has not been started")
        return self._base

    def _postmaster_pid(self) -> int | None:
        if self._base is None:
            return None
        try:
            first = (self._base / "data" / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _kill(self, pid: int) -> None:
        """Fallback when pg_ctl could not stop the postmaster: SIGQUIT, then SIGKILL."""
        for sig, wait in ((signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _pid_alive(pid):
                    return
                time.sleep(0.02)

    def _create(self) -> None:
        pg_bin = self._pg_bin if self._pg_bin is not None else find_pg_bin()
        self._user = _server_user()
        self._bin = _reachable_bin(pg_bin, self._user)
        base = Path(tempfile.mkdtemp(prefix="psycopool-pg-", dir=_tmp_root()))
        self._base = base
        with _live_lock:
            _live.add(self)
        if len(str(base / ".s.PGSQL.65535")) > _MAX_SOCKET_PATH:
            raise RuntimeError(f"socket path under {base} would exceed {_MAX_SOCKET_PATH} bytes")
        if self._user is not None:
            os.chown(base, self._user.pw_uid, self._user.pw_gid)
        argv = [str(self._bin / "initdb"), "-D", str(base / "data"), "--no-sync"]
        argv += ["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]
        result = _run(self._user, argv, cwd=base, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}, binaries {self._bin}):\n"
                + _tail(result.stdout)
            )

    def _start_server(self) -> None:
        base = self._require_base()
        assert self._bin is not None
        fixed = self._port is not None
        attempts = 1 if fixed else 3
        for attempt in range(attempts):
            port = self._port if self._port is not None else _free_port()
            try:
                offset = self.log_file.stat().st_size
            except OSError:
                offset = 0
            options = [
                "-p", str(port),
                "-k", str(base),
                "-c", f"listen_addresses={self.host}",
                "-c", "fsync=off",
                "-c", f"max_connections={self.max_connections}",
            ]  # fmt: skip
            for name, value in self._settings.items():
                options += ["-c", f"{name}={value}"]
            argv = [str(self._bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file)]
            argv += ["-w", "-t", str(_START_TIMEOUT), "-o", shlex.join(options), "start"]
            try:
                result = _run(
                    self._user, argv, cwd=base, timeout=_START_TIMEOUT + 10, prefix=self._prefix
                )
                output, code = result.stdout, result.returncode
            except subprocess.TimeoutExpired as exc:
                output, code = str(exc), -1
            if code == 0 and self.is_running:
                self._port = port
                return
            log = self._read_log(offset)
            pid = self._postmaster_pid()
            if pid is not None and _pid_alive(pid):
                self._kill(pid)
            in_use = "could not bind" in log or "already in use" in log
            if in_use and not fixed and attempt + 1 < attempts:
                continue
            raise RuntimeError(
                f"PostgreSQL failed to start on port {port} (pg_ctl exit {code}, binaries "
                f"{self._bin}).\npg_ctl: {_tail(output, 5)}\nserver log tail:\n{_tail(log)}"
            )

    def _read_log(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""
