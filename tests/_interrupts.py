"""Asynchronous exceptions for tests: what Ctrl-C, a signal handler's SystemExit or a timeout
library do to a thread that is borrowing or returning a connection.

:func:`inject` raises an exception in another thread at its next bytecode
boundary (``PyThreadState_SetAsyncExc``). :class:`Storm` drives worker threads
that borrow and return in a loop, and injects a bounded number of
:class:`Injected` exceptions into them at random moments, one at a time per
thread (each is caught by the worker before the next is sent to it: the pool
must survive one interrupt, not a second one landing in its own clean-up).
"""

from __future__ import annotations

import ctypes
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any


class Injected(KeyboardInterrupt):
    """The injected exception: a BaseException, as Ctrl-C is, so ``except Exception`` misses it."""


def inject(thread: threading.Thread, exc: type[BaseException] = Injected) -> bool:
    """Raise ``exc`` in ``thread`` at its next bytecode boundary; False if it has ended."""
    ident = thread.ident
    if ident is None or not thread.is_alive():
        return False
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
    if done > 1:  # pragma: no cover - more than one thread matched: undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        raise RuntimeError("PyThreadState_SetAsyncExc matched several threads")
    return done == 1


class _Worker(threading.Thread):
    def __init__(self, storm: Storm, index: int) -> None:
        super().__init__(name=f"storm-{index}", daemon=True)
        self.storm = storm
        self.index = index
        self.armed = threading.Event()  # may receive an injection now
        self.rounds = 0
        self.caught = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        storm = self.storm
        rng = random.Random(storm.seed * 1000 + self.index)
        failed = False
        while not failed:
            try:
                self.armed.set()
                while not storm.stop.is_set():
                    try:
                        storm.round(self, rng)
                        self.rounds += 1
                    except Exception as exc:
                        if not storm.expected(exc):
                            self.errors.append(exc)
                            failed = True
                            break
                self.armed.clear()
                return
            except Injected:
                self.armed.clear()
                self.caught += 1
                try:
                    storm.recover(self)
                except Exception as exc:  # recorded for the test to show
                    self.errors.append(exc)
                    failed = True
        self.armed.clear()


class Storm:
    """``threads`` workers run ``round(worker, rng)`` until stopped; ``injections`` land at random.

    ``recover(worker)`` runs after each injection (returns what the worker may
    still hold); ``expected(exc)`` tells which ordinary errors a round may see
    (timeouts, exhaustion).
    """

    def __init__(
        self,
        round: Callable[[_Worker, random.Random], None],
        recover: Callable[[_Worker], None],
        *,
        threads: int,
        injections: int,
        duration: float,
        expected: Callable[[BaseException], bool] = lambda exc: False,
        seed: int = 0,
    ) -> None:
        self.round = round
        self.recover = recover
        self.expected = expected
        self.seed = seed
        self.stop = threading.Event()
        self.workers = [_Worker(self, i) for i in range(threads)]
        self.injections = injections
        self.duration = duration
        self.sent = 0

    def run(self) -> None:
        rng = random.Random(self.seed)
        for worker in self.workers:
            worker.start()
        deadline = time.monotonic() + self.duration
        gap = self.duration / max(1, self.injections)
        try:
            while self.sent < self.injections and time.monotonic() < deadline:
                time.sleep(rng.uniform(0, 2 * gap))
                ready = [w for w in self.workers if w.armed.is_set() and w.is_alive()]
                if not ready or threading._limbo:  # type: ignore[attr-defined]
                    # A thread being started: CPython 3.11 gives its new thread state
                    # the starter's ident until it runs, and PyThreadState_SetAsyncExc
                    # would hit the new thread instead of the worker. Try again later.
                    continue
                worker = rng.choice(ready)
                worker.armed.clear()
                if inject(worker):
                    self.sent += 1
            # Every injection caught before the workers are told to stop.
            settle = time.monotonic() + 10
            while time.monotonic() < settle and any(
                w.is_alive() and not w.armed.is_set() for w in self.workers
            ):
                time.sleep(0.005)
        finally:
            self.stop.set()
            for worker in self.workers:
                worker.join(15)
        alive = [w for w in self.workers if w.is_alive()]
        if alive:
            frames = sys._current_frames()
            stacks = [
                f"{w.name}:\n" + "".join(traceback.format_stack(frames[w.ident]))
                for w in alive
                if w.ident in frames
            ]
            raise AssertionError("workers still running:\n" + "\n".join(stacks))

    @property
    def caught(self) -> int:
        return sum(w.caught for w in self.workers)

    @property
    def rounds(self) -> int:
        return sum(w.rounds for w in self.workers)

    @property
    def errors(self) -> list[BaseException]:
        return [e for w in self.workers for e in w.errors]


def summary(storm: Storm) -> dict[str, Any]:
    return {"sent": storm.sent, "caught": storm.caught, "rounds": storm.rounds}
