"""The exception hierarchy shared by every psycopool front door."""

from __future__ import annotations


class PoolError(Exception):
    """Base class of every error raised by psycopool itself (not by the driver)."""
