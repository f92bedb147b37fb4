"""The slow paths of the drop-in's getconn and putconn, out of ``pool.py``.

``pool.py`` keeps the hot paths (an idle connection lent, a clean one kept);
:class:`DropinLending`, a base of :class:`psycopool.pool.AbstractConnectionPool`,
holds what they call when that fails: a generated key already taken, a dead
idle connection, connecting for a reserved slot, cleaning a returned
connection, and closing one whose return was interrupted.
"""

from __future__ import annotations

import threading
from typing import Any

from psycopool._dropin_upkeep import DropinUpkeep, PoolError
from psycopool._entries import PooledConnection
from psycopool._reset import clean

_get_ident = threading.get_ident

# What a return does with the connection (_putconn).
_NOTHING, _KEEP, _CLOSE, _CLEAN = range(4)


class DropinLending(DropinUpkeep):
    """getconn's and putconn's slow paths (connecting and cleaning outside the lock).

    Interrupt safety is the rule stated in ``pool.py`` above ``_getconn``:
    each change of the books is plain stores with no call in between, a slot
    reserved for I/O (``pending``, ``closing``) is released in a handler, and
    the lock is taken with ``with``.
    """

    # -- getconn -------------------------------------------------------------

    def _getkey(self) -> int:
        """The next generated key, skipping integer keys a caller has checked out."""
        self._keys += 1
        while self._keys in self._used:
            self._keys += 1
        return self._keys

    def _drop_dead(self, entry: PooledConnection) -> None:
        """Forget a dead connection popped from the idle stack, then close it."""
        engine = self._engine
        retired = False
        try:
            with engine.lock:
                ident = id(entry.conn)
                if engine.in_use.get(ident) is entry:
                    if self._used.get(entry.key) is entry.conn:
                        del self._used[entry.key]
                    del engine.in_use[ident]
                    engine.connections_lost += 1
                    engine.closing += 1
                    retired = True
        finally:
            if retired:
                engine.close_one(entry, "dead")

    def _lend_new(self, key: Any) -> Any:
        """Connect for a slot already reserved, outside the lock, and lend it under ``key``."""
        engine = self._engine
        me = _get_ident()
        reserved = [True]
        retired = False
        try:
            entry = engine.open_connection(reserved)
            with engine.lock:
                engine.pending -= 1
                reserved[0] = False
                if not self.closed:
                    existing = self._used.get(key)
                    if existing is None:
                        conn = entry.conn
                        ident = id(conn)
                        entry.borrowed_at = engine.clock()
                        entry.key = key
                        entry.owner = me
                        engine.in_use[ident] = entry
                        self._used[key] = conn
                        return conn
                    # Another thread got a connection under the same key meanwhile.
                    entry.idle_since = engine.clock()
                    engine.idle.append(entry)
                    return existing
                engine.closing += 1
                retired = True
        except BaseException:
            if reserved[0]:  # interrupted before the slot was given back or used
                self._release_reservation()
            if not retired:
                raise
        finally:
            if retired:
                engine.close_one(entry)
        raise PoolError("connection pool is closed")

    # -- putconn -------------------------------------------------------------

    def _abandon(self, entry: PooledConnection, action: int) -> None:
        """An interrupted return: the connection counted pending or closing is closed."""
        engine = self._engine
        if action == _CLEAN:
            with engine.lock:
                engine.pending -= 1
                engine.closing += 1
        engine.close_one(entry, "interrupted")

    def _keeps_returned_locked(self) -> bool:
        """Should a clean returned connection stay idle? Lock held.

        With ``idle_timeout=0``, psycopg2's rule: only while fewer than minconn are idle.
        """
        return self.idle_timeout != 0 or len(self._engine.idle) < self.minconn

    def _clean_and_keep(self, entry: PooledConnection, token: list[int] | None = None) -> bool:
        """Roll back and restore a returned connection (counted pending), then keep or close it.

        The slot is released whatever happens, an interrupt included (the
        connection is then closed: it may be half reset). True if kept.
        ``token[0]`` is cleared when this takes the slot over from the caller.
        """
        engine = self._engine
        ok = False
        retire = True
        interrupted = True
        try:
            ok = clean(engine.driver, entry.conn, entry.state, name=self.name)
            interrupted = False
        finally:
            with engine.lock:
                keep = ok and not self.closed and self._keeps_returned_locked()
                now = engine.clock()
                engine.pending -= 1
                if token is not None:
                    token[0] = _NOTHING
                if keep:
                    entry.idle_since = now
                    retire = False
                    engine.idle.append(entry)
                else:
                    engine.closing += 1
            if retire:
                reason = "failed reset" if not ok else "more than minconn idle"
                engine.close_one(entry, "interrupted" if interrupted else reason)
        return not retire
