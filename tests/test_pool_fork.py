"""ConnectionPool across fork(): the child opens its own connections, the parent's keep working."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
from _modern import pid_of, query

from psycopool import ConnectionPool

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns about fork() in a process with threads: that is the point here.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]


def _run_child(pool: ConnectionPool, work: Any) -> dict[str, Any]:
    """Fork; in the child run ``work(pool)`` and send back its JSON result."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(read_fd)
            try:
                result = {"ok": True, "value": work(pool)}
            except BaseException as exc:
                result = {"ok": False, "error": repr(exc)}
            with os.fdopen(write_fd, "w") as out:
                json.dump(result, out)
            code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        data = inp.read()
    _, exit_status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(exit_status) == 0
    result: dict[str, Any] = json.loads(data)
    return result


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_child_using_pool_leaves_parent_connections_working(
    pg_server: Any, app_name: str, dsn: str, driver: str
):
    with ConnectionPool(dsn, min_size=2, max_size=3, driver=driver) as pool:
        pool.wait(timeout=5)
        held = pool.getconn(timeout=5)  # one lent while forking, one idle
        parent_pids = set(pg_server.pids(app_name))
        held_pid = pid_of(held)
        held.rollback()

        def child_work(pool: ConnectionPool) -> list[int]:
            pids = []
            for _ in range(2):
                with pool.connection(timeout=10) as conn:
                    pids.append(pid_of(conn))
            pool.close()
            return pids

        result = _run_child(pool, child_work)
        assert result["ok"], result
        child_pids = set(result["value"])
        assert child_pids and not child_pids & parent_pids  # its own connections

        # The parent's sessions survived: same backends, both usable.
        assert held_pid in pg_server.pids(app_name)
        assert query(held, "SELECT 1") == 1
        assert pid_of(held) == held_pid
        held.rollback()
        with pool.connection(timeout=5) as conn:
            assert query(conn, "SELECT 1") == 1
            assert pid_of(conn) in parent_pids
            assert pid_of(conn) != held_pid
        pool.putconn(held)
        assert pool.stats()["connections_lost"] == 0
        assert set(pg_server.pids(app_name)) == parent_pids  # the child closed its own
    assert pg_server.wait_count(app_name, 0) == 0


def test_child_can_borrow_even_when_parent_holds_everything(
    pg_server: Any, app_name: str, dsn: str
):
    with ConnectionPool(dsn, min_size=1, max_size=1) as pool:
        held = pool.getconn(timeout=5)  # the parent's only slot is lent

        def child_work(pool: ConnectionPool) -> int:
            with pool.connection(timeout=10) as conn:
                pid = pid_of(conn)
            pool.close()
            return pid

        result = _run_child(pool, child_work)
        assert result["ok"], result
        assert result["value"] != pid_of(held)
        held.rollback()
        pool.putconn(held)
