"""``with pool.connection()``; connections whose ``close()`` returns them (``close_returns``)."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

from psycopool._base import CT
from psycopool._errors import PoolClosed
from psycopool._readonly import server_turned_read_only

if TYPE_CHECKING:
    from psycopool._lending import LendingPool


class Borrowed(Generic[CT]):
    """The context manager returned by :meth:`ConnectionPool.connection`."""

    __slots__ = ("_conn", "_loan", "_pool", "_timeout")

    def __init__(self, pool: LendingPool[CT], timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None

    def __enter__(self) -> CT:
        pool = self._pool
        self._conn = conn = pool.getconn(self._timeout)
        if pool.close_returns:
            self._loan = _loan_of(pool, conn)
        return conn

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self._conn
        self._conn = None
        pool = self._pool
        if pool.close_returns and _loan_of(pool, conn) != self._loan and not pool._closed:
            # conn.close() in the block gave it back already (it may be lent again
            # since): nothing left to end or return.
            return
        driver = pool._driver
        try:
            if exc_type is None:
                # Both drivers' connections have `closed`.
                if not conn.closed:
                    driver.commit(conn)
                elif pool._closed:
                    raise pool._err(
                        PoolClosed,
                        f"pool {pool.name!r} was closed, and this connection with it, before"
                        " the block ended: its transaction was not committed",
                    )
                # Else closed in the block: nothing to end; putconn discards it.
            elif driver.is_closed(conn):
                pass  # closed or broken in the block: putconn discards it
            else:
                try:
                    driver.rollback(conn)
                except Exception:
                    pass  # the connection is broken: putconn discards it
                else:
                    if server_turned_read_only(driver, conn, exc):
                        pool._leave_read_only_server(conn)
        finally:
            pool.putconn(conn)


def _loan_of(pool: LendingPool[Any], conn: Any) -> tuple[int, float] | None:
    """What tells this loan of ``conn`` from a later one (borrower, time lent); None: not lent."""
    engine = pool._engine
    with engine.lock:
        entry = engine.in_use.get(id(conn))
        return None if entry is None else (entry.owner, entry.borrowed_at)


_returning_classes: dict[type[Any], type[Any]] = {}


def returning_class(cls: type[Any]) -> type[Any]:
    """A subclass of the connection class ``cls`` whose ``close()`` returns a lent connection.

    For ``close_returns=True`` where the driver has no such hook (psycopg2,
    psycopg < 3.3). The pool sets ``conn._pool`` while the connection is lent.
    """
    sub = _returning_classes.get(cls)
    if sub is None:
        base_close = cls.close

        def close(self: Any) -> None:
            pool = self._pool
            if pool is not None and not self.closed:
                pool.putconn(self)
            else:
                base_close(self)

        namespace = {"close": close, "_pool": None, "__module__": cls.__module__}
        sub = _returning_classes[cls] = type(cls.__name__, (cls,), namespace)
    return sub
