"""Bring a returned connection back to a clean, reusable state, or say it can't be."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from psycopool._drivers import (
    IDLE,
    INTRANS,
    UNKNOWN,
    AsyncDriver,
    Driver,
    SessionState,
    hide_password,
)

logger = logging.getLogger("psycopool")


def clean(
    driver: Driver,
    conn: Any,
    state: SessionState,
    extra: Callable[[Any], object] | None = None,
    *,
    session_sql: bool = True,
    name: str | None = None,
) -> bool:
    """Roll back, restore the session attributes, then run ``extra`` (committing what it runs).

    Returns False if the connection is closed, broken or could not be cleaned:
    the caller must then close it, never reuse it. ``session_sql=False`` (behind a
    transaction pooler): send no session-level statement; close rather than SET.
    """
    if driver.is_closed(conn):
        return False
    try:
        status = driver.transaction_status(conn)
        if status == UNKNOWN:
            return False
        if status != IDLE:
            driver.rollback(conn)
        if driver.session_state(conn) != state:
            driver.restore_session(conn, state, session_sql=session_sql)
        if extra is not None:
            extra(conn)
            status = driver.transaction_status(conn)
            if status == INTRANS:
                driver.commit(conn)  # what a reset function runs must take effect
            elif status != IDLE:
                return False
            driver.after_reset(conn)
    except Exception as exc:
        _log_failed_reset(name, exc)
        return False
    return not driver.is_closed(conn) and driver.transaction_status(conn) == IDLE


async def aclean(
    driver: AsyncDriver,
    conn: Any,
    state: SessionState,
    extra: Callable[[Any], object] | None = None,
    *,
    name: str | None = None,
) -> bool:
    """:func:`clean` for an async connection; ``extra`` may be a coroutine function.

    Same rules and result. A cancellation is not caught: the caller must then
    close the connection, whose state is unknown.
    """
    if driver.is_closed(conn):
        return False
    try:
        status = driver.transaction_status(conn)
        if status == UNKNOWN:
            return False
        if status != IDLE:
            await driver.arollback(conn)
        if driver.session_state(conn) != state:
            await driver.arestore_session(conn, state)
        if extra is not None:
            result = extra(conn)
            if inspect.isawaitable(result):
                await result
            status = driver.transaction_status(conn)
            if status == INTRANS:
                await driver.acommit(conn)
            elif status != IDLE:
                return False
            await driver.aafter_reset(conn)
    except Exception as exc:
        _log_failed_reset(name, exc)
        return False
    return not driver.is_closed(conn) and driver.transaction_status(conn) == IDLE


def _log_failed_reset(name: str | None, exc: Exception) -> None:
    logger.warning(
        "pool %r: closing a returned connection that could not be reset: %s",
        name or "?",
        hide_password(str(exc).strip()),
    )
