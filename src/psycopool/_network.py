"""Bounding what a dead network costs.

A silently cut network (a dead switch, a pulled cable, a server host that
vanished) sends no reset: without help, a query waits for an answer for ever
and a write is retransmitted for about 15 minutes. Two things bound it:

- ``network_timeout``: TCP keepalives and ``tcp_user_timeout`` added to every
  connection's options (never overriding ones the user set). The kernel then
  ends a connection whose peer has acknowledged nothing for that long. A slow
  query or a frozen server process is not affected: the server's kernel keeps
  acknowledging.
- :class:`Watchdog`: a bound on one call (a ping, a check) made on a
  connection. When it expires, the connection's socket is shut down, so the
  call fails at once, whatever the network does; the connection is then
  discarded. The same shutdown lets ``close()`` end connections a borrower is
  stuck on (psycopg2's ``close()`` waits for the connection's lock).
"""

from __future__ import annotations

import math
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from psycopool._args import as_seconds
from psycopool._drivers import Driver

#: The default bound, in seconds, on how long a connection may wait for a server
#: whose kernel acknowledges nothing (see docs/failure-modes.md for why 10 s).
DEFAULT_NETWORK_TIMEOUT = 10.0

#: libpq's tcp_user_timeout is an int of milliseconds; a day is plenty.
_MAX_NETWORK_TIMEOUT = 86400.0

#: The connection options that ``network_timeout`` sets.
NETWORK_OPTIONS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)


def check_network_timeout(value: Any) -> float | None:
    """``network_timeout``: seconds > 0 (at most a day), or None to add nothing."""
    seconds = as_seconds("network_timeout", value, allow_zero=False)
    if seconds is not None and not seconds <= _MAX_NETWORK_TIMEOUT:
        raise ValueError(
            f"network_timeout must be at most {_MAX_NETWORK_TIMEOUT:.0f} seconds; got {value!r}"
        )
    return seconds


def network_options(seconds: float) -> dict[str, int]:
    """libpq options ending a connection after ``seconds`` without an acknowledgement.

    ``tcp_user_timeout`` bounds data sent and not acknowledged (a query sent
    into a cut). Keepalives bound the silent wait for an answer (a query sent
    before the cut): the first probe after half the time, then probes every
    sixth; on Linux the kernel gives up when ``tcp_user_timeout`` has passed
    since it last heard from the peer, elsewhere after ``keepalives_count``
    probes, which is chosen to end near the same time.
    """
    idle = max(1, int(seconds / 2))
    interval = max(1, int(seconds / 6))
    count = max(1, math.ceil((seconds - idle) / interval))
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": max(1, round(seconds * 1000)),
    }


#: libpq's environment variables for the options psycopool may add (keepalives and
#: tcp_user_timeout have none).
_ENVIRONMENT = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def with_defaults(
    driver: Driver, conninfo: str, kwargs: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``kwargs`` plus each of ``defaults`` that the user sets nowhere libpq looks.

    That is: not in ``kwargs``, not in ``conninfo`` (parsed by the driver, with
    libpq's parser: key/value strings and URIs), not in the environment
    (``PGCONNECT_TIMEOUT``), and not in the service the connection names (see
    :func:`service_options`). Anything passed to libpq would override those.
    """
    given = set(kwargs)
    missing = [key for key in defaults if key not in given]
    if missing:
        options = driver.conninfo_options(conninfo) if conninfo else {}
        given.update(options)
        given.update(key for key, name in _ENVIRONMENT.items() if os.environ.get(name))
        service = kwargs.get("service") or options.get("service") or os.environ.get("PGSERVICE")
        if service:
            given |= service_options(str(service))
    added = {key: defaults[key] for key in missing if key not in given}
    return {**added, **kwargs}


def service_options(service: str) -> set[str]:
    """The options libpq's connection service file sets for ``service`` (empty if none found).

    libpq reads the user's file (``PGSERVICEFILE``, else ``~/.pg_service.conf``),
    then the system-wide ``pg_service.conf``; the first one holding the service is
    used. The system file's default directory is compiled into libpq (``pg_config
    --sysconfdir``), so it is read here only where ``PGSYSCONFDIR`` names it.
    """
    files = [os.environ.get("PGSERVICEFILE") or os.path.expanduser("~/.pg_service.conf")]
    sysconfdir = os.environ.get("PGSYSCONFDIR")
    if sysconfdir:
        files.append(os.path.join(sysconfdir, "pg_service.conf"))
    for path in files:
        keys = _service_section(path, service)
        if keys is not None:
            return keys
    return set()


def _service_section(path: str, service: str) -> set[str] | None:
    """The keys of section ``[service]`` in the service file ``path``; None if it has none.

    libpq's format: ``[name]`` starts a section, ``key=value`` lines follow, and
    blank lines and lines starting with ``#`` are skipped.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    keys: set[str] | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if keys is not None:
                break  # the section ended
            end = len(service) + 1  # libpq's test: "[" service "]", whatever follows
            if line[1:end] == service and line[end : end + 1] == "]":
                keys = set()
        elif keys is not None and "=" in line:
            keys.add(line.split("=", 1)[0].strip())
    return keys


def shutdown_socket(fd: int) -> None:
    """Shut the socket ``fd`` down both ways: a call blocked on it, in any thread, returns now.

    Works on a duplicate, so ``fd`` itself stays open for its owner to close.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return
    try:
        sock = socket.socket(fileno=dup)
    except OSError:  # not a socket
        os.close(dup)
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more
    finally:
        sock.close()


class Watchdog:
    """Shuts a socket down when a call on it outlives its deadline. One thread per process.

    ``arm(fd, deadline)`` before the call, ``disarm(token)`` after: it returns
    True if the deadline passed (the socket was shut down, even if the call
    succeeded just before: the connection must then be discarded). Once
    ``disarm`` returns, the socket is never touched again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[int, tuple[float, int]] = {}  # token -> (deadline, fd)
        self._next = 0
        self._thread: threading.Thread | None = None
        self._wake_at = math.inf

    def arm(self, fd: int, deadline: float) -> int:
        with self._cond:
            self._next += 1
            token = self._next
            self._armed[token] = (deadline, fd)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="psycopool-watchdog", daemon=True
                )
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        return token

    def disarm(self, token: int) -> bool:
        with self._cond:
            return self._armed.pop(token, None) is None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (deadline, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        shutdown_socket(fd)  # under the lock: never after disarm()
                self._wake_at = min((d for d, _ in self._armed.values()), default=math.inf)
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)

    def _after_fork(self) -> None:
        self.__init__()  # type: ignore[misc]  # the thread did not survive the fork


WATCHDOG = Watchdog()
os.register_at_fork(after_in_child=WATCHDOG._after_fork)


def bounded(driver: Driver, conn: Any, fd: int, deadline: float | None, call: Any) -> bool:
    """Run ``call(conn)``; False if it raised or outlived ``deadline`` (the socket is then shut)."""
    token = WATCHDOG.arm(fd, deadline) if deadline is not None else 0
    try:
        call(conn)
        ok = True
    except Exception:
        ok = False
    finally:
        if token and WATCHDOG.disarm(token):
            ok = False
    return ok


def interrupt(driver: Driver, conn: Any) -> None:
    """Shut down the socket of a connection a borrower may be blocked on, before closing it."""
    try:
        if driver.is_closed(conn):
            return  # its socket number may already belong to something else
        fd = driver.fileno(conn)
    except Exception:
        return
    if fd >= 0:
        shutdown_socket(fd)
