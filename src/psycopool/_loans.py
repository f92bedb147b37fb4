"""Who holds the connections: the lent connections of a pool, for people and for errors.

The engine records, for each lent connection, when it was borrowed and, when
the front door tracks borrowers (the modern pool with ``leak_timeout``), the
borrowing thread (or task) and its stack. Nothing here runs on the hot path.
"""

from __future__ import annotations

import sys
import threading
import traceback
from dataclasses import dataclass
from types import CodeType, FrameType
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


class Stack:
    """A borrower's stack, captured cheaply (code objects and line numbers, no source).

    Formatting, which reads source files, happens only when it is shown: in
    ``lent()``, a PoolTimeout message or a leak warning.
    """

    __slots__ = ("_frames",)

    _frames: list[tuple[CodeType, int]]

    def __init__(self, skip: int = 1) -> None:
        frames: list[tuple[CodeType, int]] = []
        frame: FrameType | None = sys._getframe(skip + 1)
        while frame is not None:
            frames.append((frame.f_code, frame.f_lineno))
            frame = frame.f_back
        frames.reverse()
        self._frames = frames

    def __str__(self) -> str:
        summaries = [
            traceback.FrameSummary(code.co_filename, lineno, code.co_name)
            for code, lineno in self._frames
        ]
        return "".join(traceback.format_list(summaries))


def borrower() -> int | str:
    """Who is borrowing: the running asyncio task's name, else the thread's ident."""
    asyncio = sys.modules.get("asyncio")  # never imported here: `import psycopool` stays light
    task = None
    if asyncio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running event loop: a thread
            pass
    if task is not None:
        return f"task {task.get_name()}"
    return threading.get_ident()


Raw = list[tuple[float, "int | str | None", "Stack | None", Any]]


def lent_locked(engine: Engine, now: float) -> Raw:
    """What ``engine`` has lent, longest held first; lock held. Make loans of it with
    :func:`loans` after releasing the lock (formatting stacks reads source files)."""
    raw: Raw = [
        # ``owner``: the borrowing thread, which the threaded front doors always record.
        (
            now - e.borrowed_at,
            e.borrower if e.borrower is not None else e.owner or None,
            e.stack,
            e.key,
        )
        for e in engine.in_use.values()
        if e not in engine.dropped
    ]
    raw.sort(key=lambda r: -r[0])
    return raw


def loans(raw: Raw) -> list[Loan]:
    """The :class:`Loan` list of a :func:`lent_locked` result (no lock needed)."""
    names: dict[int, str] | None = None
    out = []
    for held, who, stack, key in raw:
        if isinstance(who, int):
            if names is None:
                names = {t.ident: t.name for t in threading.enumerate() if t.ident is not None}
            name = names.get(who)
            who = name if name is not None else f"thread {who} (ended)"
        out.append(Loan(max(0.0, held), who, None if stack is None else str(stack), key))
    return out


def lent_summary(oldest_first: list[Loan], max_size: int, lent: int) -> str:
    """For a timeout message: how many are lent, the longest hold, where the oldest was borrowed."""
    if not oldest_first:
        return f"0 of {max_size} connections lent"
    oldest = oldest_first[0]
    who = f" by {oldest.borrower}" if oldest.borrower else ""
    text = f"{lent} of {max_size} connections lent, the longest for {oldest.held:.1f} s{who}"
    if oldest.stack:
        text += f"; it was borrowed at:\n{oldest.stack.rstrip()}"
    else:
        text += " (set leak_timeout to record where connections are borrowed)"
    return text


__all__ = ["Loan", "Stack", "borrower", "lent_locked", "lent_summary", "loans"]
