"""The async pool that keeps no idle connection: :class:`AsyncNullConnectionPool`."""

from __future__ import annotations

from typing import Any

from psycopool._args import MAX_SIZE
from psycopool._base import CT
from psycopool._engine import PooledConnection
from psycopool._pool_async import AsyncConnectionPool


class AsyncNullConnectionPool(AsyncConnectionPool[CT]):
    """Each borrow gets a new connection, each return closes it, unless a task is waiting.

    ``max_size`` still bounds how many exist at once (``None``: no bound), and
    borrowers beyond it wait in the same fair queue, with the same timeout,
    for a returned connection (handed over, not closed) or a new one. For
    servers behind an external pooler (PgBouncer) or with few, rare clients.
    """

    def __init__(
        self, conninfo: Any = "", *, min_size: int = 0, max_size: int | None = None, **kwargs: Any
    ) -> None:
        if min_size != 0:
            raise ValueError(f"min_size must be 0 for a null pool; got {min_size!r}")
        if max_size is None:
            max_size = MAX_SIZE  # "no bound": the largest size the argument checks accept
        super().__init__(conninfo, min_size=0, max_size=max_size, **kwargs)
        self._rollback_only = False  # every return takes the path that may close

    def _give_back_locked(self, entry: PooledConnection, now: float) -> bool:
        """To the oldest waiter; with none, retired (the caller closes it). Lock held."""
        engine = self._engine
        if engine.waiters and engine.hand_locked(entry, now):
            return True
        engine.retire_locked(entry)
        return False
