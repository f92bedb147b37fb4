"""Who holds the connections: the lent connections of a pool, for people and for errors.

The engine records, for each lent connection, when it was borrowed and, when
the front door tracks borrowers (the modern pool with ``leak_timeout``), the
borrowing thread (or task) and its stack. Nothing here runs on the hot path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from psycopool._engine import Engine


@dataclass(frozen=True)
class Loan:
    """One lent connection, as listed by ``pool.lent()``."""

    #: Seconds since it was borrowed.
    held: float
    #: The borrowing thread's (or task's) name, or None when borrowers are not tracked.
    borrower: str | None
    #: Where it was borrowed (a formatted stack), or None when stacks are not recorded.
    stack: str | None
    #: The drop-in's key it is checked out under; None for the modern pool.
    key: Any = None


def lent_locked(engine: Engine, now: float) -> list[Loan]:
    """The connections ``engine`` has lent, longest held first. Lock held."""
    raw = [
        (now - e.borrowed_at, e.borrower, e.stack, e.key)
        for e in engine.in_use.values()
        if e not in engine.dropped
    ]
    raw.sort(key=lambda r: -r[0])
    names: dict[int, str] | None = None
    loans = []
    for held, borrower, stack, key in raw:
        if isinstance(borrower, int):
            if names is None:
                names = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
            name = names.get(borrower)
            borrower = name if name is not None else f"thread {borrower} (ended)"
        loans.append(Loan(max(0.0, held), borrower, stack, key))
    return loans


def lent_summary(loans: list[Loan], max_size: int) -> str:
    """For a timeout message: how many are lent, the longest hold, where the oldest was borrowed."""
    if not loans:
        return f"0 of {max_size} connections lent"
    oldest = loans[0]
    who = f" by {oldest.borrower}" if oldest.borrower else ""
    text = f"{len(loans)} of {max_size} connections lent, the longest for {oldest.held:.1f} s{who}"
    if oldest.stack:
        text += f"; it was borrowed at:\n{oldest.stack.rstrip()}"
    elif oldest.borrower is None:
        text += " (set leak_timeout to record who borrows and where)"
    return text


__all__ = ["Loan", "lent_locked", "lent_summary"]
