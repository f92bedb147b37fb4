"""The judge's verdict on each psycopg_pool test that passes on psycopg_pool but not on psycopool.

Categories:

- ``bug``: psycopool does something wrong that the test rightly catches;
- ``missing``: a psycopg_pool feature psycopool lacks (a parameter, method, class, statistic);
- ``naming``: the same behaviour under another name or wording (a message, a log record);
- ``deliberate``: a documented, deliberate difference (psycopool is stricter or safer on purpose);
- ``private``: the test reaches into psycopg_pool's private internals (``p._pool``,
  ``psycopg_pool.base``, ...); it could only pass on psycopg_pool's own code;
- ``environment``: the test could not run here (e.g. the network proxy failed to start);
- ``unclassified``: no verdict yet (read the failure).

Verdicts are keyed by test id without the folder (``test_pool.py::test_name[param]``); a key
without ``[...]`` covers every parameter of that test. A failure whose message shows that the
class under test does not exist in psycopool yet is ``missing`` whatever its key says, and a few
message patterns classify what has no explicit verdict.
"""

from __future__ import annotations

import re

CATEGORIES = ("bug", "missing", "naming", "deliberate", "private", "environment", "unclassified")

_CHECK_CONNECTION = ("missing", "`ConnectionPool.check_connection` static method")
_NUM_WORKERS = ("missing", "`num_workers=` parameter")
_GET_STATS = ("missing", "`get_stats()` / `pop_stats()`")
_RECONNECT_TIMEOUT = ("missing", "`reconnect_timeout=` / `reconnect_failed=`")
_CLOSE_RETURNS = ("missing", "`close_returns=True`")
_CLOSE_RETURNS_P = ("private", "`close_returns=True` is accepted now; the test reads `p._pool`")
_P_POOL = ("private", "reads `p._pool` (psycopg_pool's idle deque)")
_SCHED = ("private", "reads `p._sched_runner` (psycopg_pool's scheduler thread)")
_WAITING = ("private", "helper `ensure_waiting()` reads `p._waiting` (psycopg_pool's queue)")
_BACKOFF = ("private", "patches `psycopg_pool.base.AttemptWithBackoff`")
_CLOSE_IN_BLOCK = (
    "bug",
    "issue 8 bug 1: `conn.close()` inside `with pool.connection()` raises at block exit"
    " (`OperationalError: the connection is closed`); expected: block ends cleanly, pool"
    " replaces the connection",
)
_CHECK_SKIPPED = (
    "bug",
    "issue 8 bug 2: the `check` callable is not run on the first borrow after open / on a"
    " connection handed to a waiter, so a failing check lends the connection instead of"
    " `PoolTimeout`",
)

_CANCELLED_CONNECT = (
    "bug",
    "flaky: `close()` (after `wait()` timed out) cancels connection attempts in flight; the test's"
    " slowed-down `connect` had already opened its connection, which is then dropped unclosed"
    " ('AsyncConnection ... deleted while still open', an error under the suite's"
    " filterwarnings=error). psycopg_pool lets the attempt finish and closes what it opened."
    " Passed on the second try",
)

_NULL_WAIT = (
    "missing",
    "the null pool's `wait()` returns at once (min_size 0); psycopg_pool's opens one test"
    " connection and raises `PoolTimeout` if it can't (connectivity check at startup)",
)

_NULL_WAIT_ERR = (
    "bug",
    "the async null pool's `wait()` now opens a test connection, but a failure escapes as the"
    " raw error (`OperationalError: connection refused`, or the `SyntaxError` raised by"
    " `configure`) instead of `PoolTimeout` naming it, which psycopg_pool raises and"
    " psycopool's own docs promise for `wait()`",
)

VERDICTS: dict[str, tuple[str, str]] = {
    # ---- test_pool.py (ConnectionPool) ---------------------------------------------------
    "test_pool.py::test_generic_connection_type": (
        "missing",
        "`connection_class=MyConnection[MyRow]` (a parametrised generic alias, which psycopg_pool"
        " accepts) is refused: 'connection_class must be a class'; unwrap it with"
        " `typing.get_origin()` for the checks and keep the alias for `connect`",
    ),
    "test_pool.py::test_non_generic_connection_type": (
        "missing",
        "`ConnectionPool[MyConnection]`: psycopool's pool is not `Generic[CT]`",
    ),
    "test_pool.py::test_concurrent_filling": ("private", "patches `ConnectionPool._add_to_pool`"),
    "test_pool.py::test_wait_ready": _NUM_WORKERS,
    "test_pool.py::test_open_wait": _NUM_WORKERS,
    "test_pool.py::test_open_as_wait": _NUM_WORKERS,
    "test_pool.py::test_configure": _CLOSE_IN_BLOCK,
    "test_pool.py::test_reset_badstate": (
        "deliberate",
        "a `reset` callable that leaves a transaction open: psycopool commits it (documented:"
        " what reset runs is committed); psycopg_pool discards the connection and warns",
    ),
    "test_pool.py::test_intrans_rollback": (
        "naming",
        "rollback on return works; psycopool logs no WARNING when a connection comes back"
        " INTRANS (psycopg_pool logs 'rolling back returned connection ... INTRANS')",
    ),
    "test_pool.py::test_inerror_rollback": (
        "naming",
        "rollback on return works; no WARNING record for a connection returned INERROR",
    ),
    "test_pool.py::test_active_close": (
        "naming",
        "the connection is discarded as expected; psycopool logs one WARNING ('could not be"
        " reset'), psycopg_pool two ('ACTIVE', then 'BAD')",
    ),
    "test_pool.py::test_fail_rollback_close": (
        "naming",
        "the connection is discarded as expected; psycopool logs one WARNING, psycopg_pool"
        " three ('INERROR', the OperationalError, 'BAD')",
    ),
    "test_pool.py::test_del_no_warning": (
        "deliberate",
        "an abandoned pool (garbage-collected, never closed) emits one ResourceWarning naming"
        " the pool (issue 8's spec: an unclosed pool is a leak worth a warning); psycopg_pool"
        " emits nothing",
    ),
    "test_pool.py::test_grow": (
        "deliberate",
        "timings pin psycopg_pool's one-connection-at-a-time growth; psycopool opens up to 4"
        " connections at once, so waiters are served sooner than the test expects",
    ),
    "test_pool.py::test_shrink": ("private", "imports `psycopg_pool.pool.ShrinkPool`"),
    "test_pool.py::test_reconnect": _BACKOFF,
    "test_pool.py::test_check_backoff": _BACKOFF,
    "test_pool.py::test_reconnect_after_grow_failed": (
        "deliberate",
        "the first `reconnect_failed` call comes in time; the test then expects a second call"
        " within 2 s (psycopg_pool calls it after every failed growth attempt), psycopool calls"
        " it once per run of failures (issue 8's spec). Then it reads `p._pool` (private)",
    ),
    "test_pool.py::test_get_config_raise_exception": (
        "naming",
        "psycopool logs 'connection attempt N failed, next in ...', the test looks for"
        " 'reconnection attempt'; it also wants fewer than 5 in 2 s, and psycopool's backoff"
        " starts at 0.1 s (psycopg_pool's at 1 s), so about 5 are logged",
    ),
    "test_pool.py::test_reconnect_failure": (
        "deliberate",
        "after the proxy stops, psycopg_pool (no check) lends the dead connection and the query"
        " fails at once; psycopool's liveness check drops it and the borrower waits its 30 s"
        " timeout for a new one, so the test's timing (t1 - t0 = -29 s) breaks. Then it reads"
        " `p._nconns` (private)",
    ),
    "test_pool.py::test_uniform_use": (
        "deliberate",
        "psycopool's idle connections are a LIFO stack (the most recently used connection"
        " goes out first, so surplus ones age out); the test expects FIFO round-robin use",
    ),
    "test_pool.py::test_resize": (
        "private",
        "reads `p._pool`; with it (probe) the sampled sizes differ where psycopool closes idle"
        " connections above a lowered `max_size` at once (documented) instead of at the next"
        " `max_idle` pass",
    ),
    "test_pool.py::test_max_lifetime": (
        "deliberate",
        "psycopool never lends a connection past `max_lifetime`; psycopg_pool checks the age"
        " only on return, so the test expects one borrow of an expired connection",
    ),
    "test_pool.py::test_check": (
        "private",
        "reads `p._pool`; with it (probe) `check()` does replace the closed connection but logs"
        " no WARNING record (naming)",
    ),
    "test_pool.py::test_connect_no_check": (
        "deliberate",
        "psycopool's default liveness check replaces a connection the server terminated;"
        " the test expects psycopg_pool (no check by default) to lend it and fail",
    ),
    "test_pool.py::test_connect_check": _CHECK_CONNECTION,
    "test_pool.py::test_getconn_check": _CHECK_CONNECTION,
    "test_pool.py::test_stats_check": _CHECK_CONNECTION,
    "test_pool.py::test_spike": _P_POOL,
    "test_pool.py::test_check_returns_an_ok_connection": (
        "private",
        "the failing check now gives `PoolTimeout` (issue 8 bug 2, fixed); then the test reads"
        " `p._pool`. With it (probe): the connection that failed the check was discarded and"
        " replaced (psycopool's rule), so the idle list is empty for a moment",
    ),
    "test_pool.py::test_override_close": (
        "private",
        "its `ReturningConnection.close()` returns the connection when `conn._pool` (set by"
        " psycopg_pool, a private attribute) is there; psycopool sets no such attribute, so"
        " `close()` really closes. psycopool's way is `close_returns=True`",
    ),
    "test_pool.py::test_override_close_no_loop_subclass": (
        "private",
        "same `ReturningConnection` relying on `conn._pool`; then reads `p._pool`",
    ),
    "test_pool.py::test_close_returns": _CLOSE_RETURNS_P,
    "test_pool.py::test_close_returns_custom_class": _CLOSE_RETURNS_P,
    "test_pool.py::test_close_returns_no_loop": _CLOSE_RETURNS_P,
    "test_pool_null.py::test_close_returns": (
        "missing",
        "`NullConnectionPool(close_returns=True)` is refused (TypeError); psycopg_pool's null"
        " pools accept it and ignore it (a null pool closes on return anyway)",
    ),
    "test_pool.py::test_stats_connect": (
        "missing",
        "`get_stats()`; and `connections_num` counts successes, psycopg_pool counts attempts"
        " (issue 8 bug 3)",
    ),
    "test_pool.py::test_refill_on_check": _P_POOL,
    "test_pool.py::test_connect_check_timeout": _CHECK_CONNECTION,
    # ---- test_pool_common.py, ConnectionPool parameter -----------------------------------
    "test_pool_common.py::test_defaults[ConnectionPool]": (
        "deliberate",
        "`num_workers` defaults to 4 (connections opened at once) where psycopg_pool's is 3"
        " (worker threads)",
    ),
    "test_pool_common.py::test_create_warning[ConnectionPool]": (
        "deliberate",
        "psycopg_pool warns (DeprecationWarning) when `open` is not given because its default"
        " will change; psycopool's `open=True` default is stable and documented",
    ),
    "test_pool_common.py::test_setup_no_timeout[ConnectionPool]": _P_POOL,
    "test_pool_common.py::test_configure_badstate[ConnectionPool]": (
        "deliberate",
        "`configure` that leaves a transaction open: psycopool commits it (documented);"
        " psycopg_pool refuses the connection, so its `wait()` times out",
    ),
    "test_pool_common.py::test_queue[ConnectionPool]": (
        "private",
        "asserts `conn._pool is p` (psycopg_pool sets a private attribute on the connection);"
        " timings and the 2 distinct backends would pass",
    ),
    "test_pool_common.py::test_queue_size[ConnectionPool]": _GET_STATS,
    "test_pool_common.py::test_dead_client[ConnectionPool]": _P_POOL,
    "test_pool_common.py::test_broken_reconnect[ConnectionPool]": _CLOSE_IN_BLOCK,
    "test_pool_common.py::test_close_no_tasks[ConnectionPool]": _SCHED,
    "test_pool_common.py::test_del_stops_threads[ConnectionPool]": _SCHED,
    "test_pool_common.py::test_reopen[ConnectionPool]": _SCHED,
    "test_pool_common.py::test_close_connection_on_pool_close[ConnectionPool]": (
        "deliberate",
        "`close()` while a connection is lent: psycopool closes it (after close's timeout) and"
        " the block raises `PoolClosed` ('its transaction was not committed'); psycopg_pool"
        " leaves it open, commits at block exit, then closes it",
    ),
    "test_pool_common.py::test_closed_queue[ConnectionPool]": _WAITING,
    "test_pool_common.py::test_open_explicit[ConnectionPool]": (
        "naming",
        "message: psycopool says \"pool 'x' is closed\", the test matches 'is already closed'",
    ),
    "test_pool_common.py::test_jitter[ConnectionPool]": (
        "private",
        "calls `ConnectionPool._jitter`",
    ),
    "test_pool_common.py::test_stats_measures[ConnectionPool]": _GET_STATS,
    "test_pool_common.py::test_stats_usage[ConnectionPool]": (
        "environment",
        "a timing bound missed under load (`usage_ms` or `requests_wait_ms` a few % over);"
        " psycopg_pool failed this test in 2 of 3 baseline runs too",
    ),
    "test_pool_common.py::test_check_connection[ConnectionPool-True]": _CHECK_CONNECTION,
    "test_pool_common.py::test_check_connection[ConnectionPool-False]": _CHECK_CONNECTION,
    "test_pool_common.py::test_check_init[ConnectionPool]": _CHECK_SKIPPED,
    "test_pool_common.py::test_check_timeout[ConnectionPool]": _CHECK_SKIPPED,
    "test_pool_common.py::test_drain[ConnectionPool]": ("missing", "`drain()`"),
    # ---- NullConnectionPool (sync and async share these through sync_twin) ----------------
    "test_pool_common.py::test_defaults[NullConnectionPool]": (
        "deliberate",
        "`num_workers` defaults to 4 (connections opened at once), psycopg_pool's to 3",
    ),
    "test_pool_common.py::test_create_warning[NullConnectionPool]": (
        "deliberate",
        "no warning about the `open` default (psycopool's default is stable)",
    ),
    "test_pool_common.py::test_wait_closed[NullConnectionPool]": (
        "bug",
        "`wait()` on a closed pool returns instead of raising `PoolClosed` when `min_size` is 0:"
        " it tests 'enough connections' (0 >= 0) before 'closed'; swap the two tests",
    ),
    "test_pool_common.py::test_setup_no_timeout[NullConnectionPool]": _P_POOL,
    "test_pool_common_async.py::test_setup_no_timeout[asyncio-AsyncNullConnectionPool]": _P_POOL,
    "test_pool_common_async.py::test_configure_broken[asyncio-AsyncNullConnectionPool]": (
        "naming",
        "`wait()` raises `PoolTimeout` naming configure's error (fixed by the judge, 9dda9e9);"
        " psycopg_pool also logs it as a WARNING record, psycopool's test connection does not",
    ),
    "test_pool_common.py::test_configure_badstate[NullConnectionPool]": (
        "deliberate",
        "what `configure` leaves in a transaction is committed (and the null pool's `wait()`"
        " opens no test connection, see `test_configure_broken`)",
    ),
    "test_pool_common.py::test_configure_broken[NullConnectionPool]": _NULL_WAIT,
    "test_pool_common.py::test_queue[NullConnectionPool]": (
        "private",
        "asserts `conn._pool is p` (psycopg_pool's private attribute on the connection)",
    ),
    "test_pool_common.py::test_close_no_tasks[NullConnectionPool]": _SCHED,
    "test_pool_common.py::test_reopen[NullConnectionPool]": _SCHED,
    "test_pool_common.py::test_del_stops_threads[NullConnectionPool]": _SCHED,
    "test_pool_common.py::test_closed_queue[NullConnectionPool]": _WAITING,
    "test_pool_common.py::test_dead_client[NullConnectionPool]": _P_POOL,
    "test_pool_common.py::test_jitter[NullConnectionPool]": ("private", "calls `_jitter`"),
    "test_pool_common.py::test_open_explicit[NullConnectionPool]": (
        "naming",
        "message: \"pool 'x' is closed\" where the test matches 'is already closed'",
    ),
    "test_pool_common.py::test_close_connection_on_pool_close[NullConnectionPool]": (
        "deliberate",
        "`close()` closes lent connections (after its timeout); the block then raises"
        " `PoolClosed` saying its transaction was not committed",
    ),
    "test_pool_common.py::test_stats_usage[NullConnectionPool]": (
        "deliberate",
        "`requests_queued` is 7 where psycopg_pool says 4: a psycopool borrower never connects"
        " itself (a connector opens the connection and hands it over), so every borrow of a"
        " null pool waits and is counted as queued",
    ),
    "test_pool_common.py::test_check_connection[NullConnectionPool-True]": _CHECK_CONNECTION,
    "test_pool_common.py::test_check_connection[NullConnectionPool-False]": _CHECK_CONNECTION,
    "test_pool_null.py::test_wait_ready": _NULL_WAIT,
    "test_pool_null.py::test_reset": _WAITING,
    "test_pool_null.py::test_reset_badstate": _WAITING,
    "test_pool_null.py::test_reset_broken": _WAITING,
    "test_pool_null.py::test_intrans_rollback": _WAITING,
    "test_pool_null.py::test_inerror_rollback": _WAITING,
    "test_pool_null.py::test_active_close": _WAITING,
    "test_pool_null.py::test_fail_rollback_close": _WAITING,
    "test_pool_null.py::test_bad_resize": (
        "bug",
        "`resize(min_size=1)` on a null pool is accepted (the constructor refuses min_size != 0);"
        " it should raise ValueError (async null pool: fixed by the judge in 67405a3)",
    ),
    "test_pool_null.py::test_generic_connection_type": (
        "missing",
        "`connection_class=MyConnection[MyRow]` (a parametrised generic alias) is refused",
    ),
    "test_pool_null_async.py::test_wait_ready": (
        "bug",
        "the null pool's `wait(0.1)` now opens a test connection, and its timeout cancels the"
        " attempt after the test's slowed `connect` had opened the connection (it sleeps 0.2 s"
        " after connecting): the connection is dropped unclosed ('deleted while still open',"
        " an error in this suite). Same cause as test_pool_async's test_wait_ready/test_open_wait:"
        " a cancelled attempt must close what it opened",
    ),
    "test_pool_null_async.py::test_max_lifetime": (
        "bug",
        "a connection the null pool opened for a borrower had no expiry (`expires_at` inf), so it"
        " went from task to task past `max_lifetime`; fixed in 7af0f79 (judge)",
    ),
    # ---- async-only verdicts (the others follow their sync twin) --------------------------
    "test_pool_async.py::test_wait_ready": _CANCELLED_CONNECT,
    "test_pool_async.py::test_open_wait": _CANCELLED_CONNECT,
    "test_pool_async.py::test_open_as_wait": _CANCELLED_CONNECT,
    "test_pool_async.py::test_check_returns_an_ok_connection": (
        "private",
        "the failing check gives `PoolTimeout` as expected; then the test reads `p._pool`",
    ),
    "test_pool_async.py::test_concurrent_filling": (
        "private",
        "patches `AsyncConnectionPool._add_to_pool`",
    ),
    "test_pool_common_async.py::test_create_warning": (
        "deliberate",
        "psycopg_pool warns (RuntimeWarning) on `open=True` in the constructor of an async pool;"
        " psycopool opens it when a loop runs and raises a clear error when none does",
    ),
    "test_pool_common_async.py::test_stats_usage[asyncio-AsyncConnectionPool]": (
        "environment",
        "timing bound missed under load (`requests_wait_ms` 850..950, got ~986); psycopg_pool"
        " fails the sync twin in 2 of 3 baseline runs",
    ),
}

_CLASS_MISSING = re.compile(r"has no attribute '((?:Async)?(?:Null)?ConnectionPool)'")
_PATTERNS: list[tuple[re.Pattern[str], tuple[str, str]]] = [
    (re.compile(r"unexpected keyword argument '(\w+)'"), ("missing", "`{0}=` parameter")),
    (
        re.compile(r"No module named 'psycopg_pool\.(\w+)'"),
        ("private", "imports `psycopg_pool.{0}`"),
    ),
    (re.compile(r"has no attribute '(_\w+|base)'"), ("private", "uses `{0}`")),
    (re.compile(r"has no attribute '(\w+)'"), ("missing", "`{0}`")),
    (re.compile(r"proxy didn't start"), ("environment", "the proxy did not start")),
]


def sync_twin(test_id: str) -> str:
    """The id of the sync test an async one was generated from (psycopg's async_to_sync)."""
    name, _, param = test_id.partition("[")
    name = name.replace("_async.py::", ".py::")
    param = param.removeprefix("asyncio").removeprefix("-").replace("Async", "")
    return f"{name}[{param}" if param and param != "]" else name


def classify(test_id: str, message: str) -> tuple[str, str]:
    found = _CLASS_MISSING.search(message)
    if found:
        return "missing", f"`{found.group(1)}` does not exist in psycopool yet"
    if "proxy didn't start" in message:
        return "environment", "the tests' proxy did not start in time (loaded machine)"
    for key in (test_id, sync_twin(test_id)):
        if key in VERDICTS:
            return VERDICTS[key]
        bare = key.split("[", 1)[0]
        if bare in VERDICTS:
            return VERDICTS[bare]
    for pattern, (category, reason) in _PATTERNS:
        found = pattern.search(message)
        if found:
            return category, reason.format(*found.groups()) + " (by message)"
    return "unclassified", ""
