"""The test harness itself: psycopool._server.TempServer and the pg_server fixture."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from _pg import ADMIN_APP_NAME, PgServer, with_app_name

from psycopool import _server, _server_bin
from psycopool._server import PgBinNotFound, TempServer, find_pg_bin

IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    try:
        return find_pg_bin()
    except PgBinNotFound as exc:
        pytest.skip(str(exc))


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary folder under /tmp that the server user can traverse."""
    path = Path(tempfile.mkdtemp(prefix="psycopool-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _server_user_can_exec(path: Path) -> bool:
    user = _server_bin._server_user()
    return _server_bin._user_can_exec(user, path)


# -- the pg_server fixture ------------------------------------------------------------------


def test_connect(pg_server: PgServer, dsn: str, app_name: str) -> None:
    with pg_server.admin_connect() as admin:
        assert admin.autocommit
        with admin.cursor() as cur:
            cur.execute("SELECT current_setting('application_name')")
            assert cur.fetchone() == (ADMIN_APP_NAME,)
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('application_name'), 1")
            assert cur.fetchone() == (app_name, 1)
        assert pg_server.count(app_name) == 1
    finally:
        conn.close()
    assert pg_server.wait_count(app_name, 0) == 0


def test_app_name_unique_and_short(request: pytest.FixtureRequest, app_name: str) -> None:
    other = request.getfixturevalue("app_name")  # same test: the same value
    assert other == app_name
    assert app_name.startswith("psycopool-test-")
    assert len(app_name.encode()) <= 63


@pytest.mark.parametrize("n", [1, 2])
def test_app_name_differs_per_test(app_name: str, n: int) -> None:
    seen = test_app_name_differs_per_test.__dict__.setdefault("seen", set())
    assert app_name not in seen
    seen.add(app_name)


def test_dsn_uri_form() -> None:
    assert with_app_name("host=h", "x") == "host=h application_name=x"
    uri = with_app_name("postgresql://u@h:5/db", "x")
    assert "application_name=x" in uri and "host=h" in uri and "port=5" in uri


def test_count_pids_terminate_wait_count(pg_server: PgServer, dsn: str, app_name: str) -> None:
    conns = [psycopg2.connect(dsn) for _ in range(3)]
    try:
        assert pg_server.count(app_name) == 3
        assert pg_server.pids(app_name) == sorted(c.info.backend_pid for c in conns)
        assert pg_server.count(app_name + "-nobody") == 0

        conns[0].close()
        assert pg_server.wait_count(app_name, 2) == 2

        assert pg_server.terminate(app_name) == 2
        assert pg_server.count(app_name) == 0  # terminate waits until they are gone
        for conn in conns[1:]:
            with pytest.raises(psycopg2.OperationalError):
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
        assert pg_server.terminate(app_name) == 0
    finally:
        for conn in conns:
            conn.close()
    # wait_count gives up after the timeout and returns the last count
    assert pg_server.wait_count(app_name, 5, timeout=0.05) == 0


def test_restart_keeps_port_and_kills_connections(pg_server: PgServer, dsn: str) -> None:
    if pg_server.is_external:
        pytest.skip("restart needs the throwaway server")
    port = pg_server.server.port if pg_server.server else None
    old = psycopg2.connect(dsn)
    try:
        pg_server.restart()
        assert pg_server.server is not None and pg_server.server.port == port
        assert pg_server.is_running
        with pytest.raises(psycopg2.OperationalError):
            with old.cursor() as cur:
                cur.execute("SELECT 1")
    finally:
        old.close()
    new = psycopg2.connect(dsn)
    try:
        with new.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        new.close()


def test_stop_leaves_server_down(pg_server: PgServer, dsn: str) -> None:
    if pg_server.is_external:
        pytest.skip("stop needs the throwaway server")
    pg_server.stop()
    assert not pg_server.is_running
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=2)


def test_next_test_gets_running_server(pg_server: PgServer, dsn: str, app_name: str) -> None:
    assert pg_server.is_running
    conn = psycopg2.connect(dsn)
    try:
        assert pg_server.count(app_name) == 1
    finally:
        conn.close()


def test_fault_methods_skip_on_external_server(pg_server: PgServer) -> None:
    external = PgServer(pg_server.dsn)
    for method in (external.restart, external.stop, external.start):
        with pytest.raises(pytest.skip.Exception, match="PSYCOPOOL_TEST_DSN"):
            method()
    external.ensure_running()  # a no-op
    assert external.count("psycopool-nobody") == 0
    external.close()


# -- TempServer -----------------------------------------------------------------------------


def test_tempserver_lifecycle_and_cleanup(pg_bin: Path) -> None:
    server = TempServer(max_connections=23)
    with server:
        base = server.base_dir
        assert base is not None and base.is_dir()
        assert base.name.startswith("psycopool-pg-") and base.parent == Path("/tmp")
        assert server.is_running
        assert server.dsn == f"host=127.0.0.1 port={server.port} dbname=postgres user=postgres"
        with psycopg2.connect(server.dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_connections'), current_setting('fsync')")
            assert cur.fetchone() == ("23", "off")
        conn.close()
        server.stop()
        assert not server.is_running
        server.stop()  # idempotent
        server.start()
        assert server.is_running
        data = str(server.data_dir)
    assert not base.exists()
    leftover = subprocess.run(["pgrep", "-af", data], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == ""
    assert not server.is_running
    assert server.base_dir is None
    server.cleanup()  # idempotent


def test_tempserver_fixed_port(pg_bin: Path) -> None:
    port = _server._free_port()
    with TempServer(port=port) as server:
        assert server.port == port
        server.restart()
        assert server.port == port and server.is_running


def test_start_failure_reports_log_and_removes_files(
    pg_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(prefix: str | None = None, dir: Path | None = None) -> str:
        path = real_mkdtemp(prefix=prefix, dir=dir)
        created.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    server = TempServer(max_connections=-5)
    with pytest.raises(RuntimeError, match="server log tail") as info:
        server.start()
    assert "max_connections" in str(info.value)
    assert created and not any(os.path.exists(p) for p in created)
    assert server.base_dir is None


def test_find_pg_bin(pg_bin: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PG_BIN", str(pg_bin))
    assert find_pg_bin() == pg_bin
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    with pytest.raises(PgBinNotFound, match="PG_BIN"):
        find_pg_bin()
    monkeypatch.delenv("PG_BIN")
    wheel = _server_bin._wheel_bin_dirs()
    if wheel:
        assert find_pg_bin() == wheel[0]
        assert wheel[0].parent.name == "pginstall18"


def test_no_binaries_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(_server_bin, "_wheel_bin_dirs", lambda: [])
    monkeypatch.setattr(_server_bin, "_system_bin_dirs", lambda: [])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match=r"pip install 'psycopool\[server\]'"):
        find_pg_bin()


# -- binaries reachable by the unprivileged user --------------------------------------------


def _fake_install(root: Path) -> Path:
    """A wheel-like tree under ``root`` (0700 folders): ``pkg/pginstall18/{bin,lib,share}``
    (bin/postgres 0700, a symlink in lib/, a 0600 file in share/) and a sibling ``pkg.libs``."""
    install = root / "pkg" / "pginstall18"
    (install / "bin").mkdir(parents=True)
    (root / "pkg.libs").mkdir()
    (root / "pkg.libs" / "libpq-abc.so.5").write_text("bundled")
    (install / "lib").mkdir()
    (install / "share" / "postgresql").mkdir(parents=True)
    postgres = install / "bin" / "postgres"
    postgres.write_text("#!/bin/sh\necho fake\n")
    postgres.chmod(0o700)
    (install / "lib" / "libpq.so.5.18").write_text("lib")
    (install / "lib" / "libpq.so.5").symlink_to("libpq.so.5.18")
    data = install / "share" / "postgresql" / "postgres.bki"
    data.write_text("bki")
    data.chmod(0o600)
    for d in (install / "bin", install / "lib", install / "share", install, root / "pkg.libs"):
        d.chmod(0o700)
    return install


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]
    }


def test_copy_install_from_root_only_dir(scratch: Path) -> None:
    private = Path(tempfile.mkdtemp(prefix="psycopool-private-", dir="/tmp"))  # 0700
    try:
        install = _fake_install(private / "venv")
        before = _modes(private)

        copy = _server_bin._copy_install(install, dest_parent=scratch)
        top = copy.parent.parent
        assert top.parent == scratch and copy == top / "pkg" / "pginstall18"
        assert top.name.startswith(f"psycopool-pgbin-{os.geteuid()}-")
        assert (top / _server_bin._COMPLETE_MARKER).is_file()
        assert stat.S_IMODE(top.stat().st_mode) == 0o755
        assert stat.S_IMODE((copy / "bin" / "postgres").stat().st_mode) == 0o755
        assert (
            stat.S_IMODE((copy / "share" / "postgresql" / "postgres.bki").stat().st_mode) == 0o644
        )
        assert os.readlink(copy / "lib" / "libpq.so.5") == "libpq.so.5.18"
        assert (top / "pkg.libs" / "libpq-abc.so.5").read_text() == "bundled"
        assert _server_user_can_exec(copy / "bin" / "postgres")
        assert _modes(private) == before  # the source folders were not loosened

        marker = top / _server_bin._COMPLETE_MARKER
        marker_mtime = marker.stat().st_mtime_ns
        assert _server_bin._copy_install(install, dest_parent=scratch) == copy  # reused
        assert marker.stat().st_mtime_ns == marker_mtime
        assert [p.name for p in scratch.iterdir()] == [top.name]  # no staging leftovers

        marker.unlink()  # incomplete: rebuilt
        assert _server_bin._copy_install(install, dest_parent=scratch) == copy
        assert marker.is_file()
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="only root switches to an unprivileged user")
def test_reachable_bin_copies_only_when_needed(
    scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_server_bin, "_copy_root", lambda: scratch)
    user = _server_bin._server_user()
    assert user is not None
    private = Path(tempfile.mkdtemp(prefix="psycopool-private-", dir="/tmp"))
    try:
        install = _fake_install(private / "venv")
        assert not _server_bin._user_can_exec(user, install / "bin" / "postgres")
        reachable = _server_bin._reachable_bin(install / "bin", user)
        assert scratch in reachable.parents and reachable.name == "bin"
        assert _server_bin._user_can_exec(user, reachable / "postgres")

        private.chmod(0o755)  # now reachable as it is (all its folders and binaries)
        for d in (private / "venv", private / "venv" / "pkg", install, install / "bin"):
            d.chmod(0o755)
        (install / "bin" / "postgres").chmod(0o755)
        assert _server_bin._reachable_bin(install / "bin", user) == install / "bin"
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(not IS_ROOT, reason="only root switches to an unprivileged user")
def test_server_from_root_only_venv(
    pg_bin: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the wheel's install tree inside a 0700 folder still runs a server."""
    if not (pg_bin.parent / "share").is_dir() or not (pg_bin.parent / "lib").is_dir():
        pytest.skip(f"{pg_bin} is not a relocatable install tree")
    monkeypatch.setattr(_server_bin, "_copy_root", lambda: scratch)
    private = Path(tempfile.mkdtemp(prefix="psycopool-private-", dir="/tmp"))
    try:
        # the wheel's layout: site-packages/<pkg>/<install>/bin and site-packages/<pkg>.libs
        package = pg_bin.parent.parent
        install = private / "venv" / package.name / pg_bin.parent.name
        shutil.copytree(pg_bin.parent, install, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, private / "venv" / libs.name, symlinks=True)
        user = _server_bin._server_user()
        assert not _server_bin._user_can_exec(user, install / "bin" / "postgres")
        with TempServer(pg_bin=install / "bin") as server:
            assert server.bin_dir is not None and scratch in server.bin_dir.parents
            # the data folder is not under the scratch root: only the binaries are copied
            assert server.base_dir is not None and server.base_dir.parent == Path("/tmp")
            with psycopg2.connect(server.dsn) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                assert cur.fetchone() == (1,)
            conn.close()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_atexit_cleanup(pg_bin: Path) -> None:
    server = TempServer()
    server.start()
    base = server.base_dir
    assert base is not None
    assert server in _server._live
    _server._cleanup_all()
    assert not base.exists() and not server.is_running
    assert server not in _server._live
