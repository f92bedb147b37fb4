"""Reads of an asyncio pool's books from other threads, done on its event loop.

The asyncio pool's hot paths change the books without the engine's lock: only
the loop's thread writes them (see ``Engine.lock``). A reader on another
thread (a metrics exporter, a worker thread asking for ``get_stats()``) could
otherwise catch a borrow half made, so :class:`LoopOwner` runs it on the loop
and waits for the answer a bounded time. When the loop is not running, or
does not get to it within ``wait_seconds`` (blocked by something else), the
caller reads under the lock itself: no hot path is then part-way through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LoopOwner:
    """The loop (and its thread) that owns an asyncio pool's books."""

    __slots__ = ("loop", "thread")

    #: How long a reader on another thread waits for the loop before reading itself.
    wait_seconds = 1.0

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.loop = loop
        self.thread = thread

    def run(self, fn: Callable[[], T], lock: threading.RLock) -> tuple[bool, T | None]:
        loop = self.loop
        if threading.get_ident() == self.thread or not loop.is_running():
            return False, None
        answer: concurrent.futures.Future[T] = concurrent.futures.Future()

        def on_loop() -> None:
            if not answer.set_running_or_notify_cancel():
                return  # the reader gave up waiting and read itself
            try:
                with lock:
                    value = fn()
            except BaseException as exc:
                answer.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt, SystemExit: the loop's to handle as well
            else:
                answer.set_result(value)

        try:
            loop.call_soon_threadsafe(on_loop)
        except RuntimeError:  # closed meanwhile
            return False, None
        try:
            return True, answer.result(self.wait_seconds)
        except concurrent.futures.TimeoutError:
            if answer.cancel():
                return False, None
            return True, answer.result()  # running on the loop now: its answer is coming
