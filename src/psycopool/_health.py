"""Is an idle connection still alive? Answered without a round trip.

An idle connection's socket has nothing to read. If ``poll`` says it is
readable, the server sent something: a NOTIFY (consume it and keep the
connection), or a termination notice followed by EOF (the driver raises or
marks the connection closed: discard it). A silently dropped network is not
seen here; ``check="ping"`` or TCP keepalives catch that.
"""

from __future__ import annotations

import select
from typing import Any

from psycopool._drivers import Driver

# A server that keeps sending (a NOTIFY storm) must not keep us here for ever:
# after this many reads a connection that still answers is considered alive.
_MAX_READS = 16


def make_poller(driver: Driver, conn: Any) -> Any:
    """A ``poll`` object watching the connection's socket for input, made once per connection."""
    poller = select.poll()
    poller.register(driver.fileno(conn), select.POLLIN)
    return poller


def is_alive(driver: Driver, conn: Any, poller: Any) -> bool:
    """True if ``conn`` may be handed out: not closed, and no EOF or error waiting on its socket."""
    if driver.is_closed(conn):
        return False
    if not poller.poll(0):
        return True
    try:
        for _ in range(_MAX_READS):
            driver.consume_input(conn)
            if driver.is_closed(conn):
                return False
            if not poller.poll(0):
                return True
    except Exception:
        return False
    return not driver.is_closed(conn)


def ping(driver: Driver, conn: Any) -> bool:
    """True if the server answers an empty query: one round trip, catches dead networks."""
    try:
        driver.execute(conn, "")
    except Exception:
        return False
    return True
