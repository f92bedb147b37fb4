"""Drive ``_fault_worker.py`` (a pool under load in another process) and measure what it saw."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WORKER = str(Path(__file__).resolve().parent / "_fault_worker.py")


class Worker:
    """The worker process; ``prefix`` runs it elsewhere (``ip netns exec <client namespace>``)."""

    def __init__(self, config: dict[str, Any], prefix: Sequence[str] = ()) -> None:
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parent.parent / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, _WORKER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                continue
        self._lines.put(None)

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next message, which must be ``event``, within ``timeout`` seconds."""
        try:
            message = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the worker sent no {event!r} within {timeout} s") from None
        if message is None:
            self.proc.wait(5)
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the worker exited before {event!r}:\n{stderr[-3000:]}")
        assert message.get("event") == event, message
        return message

    def send(self, command: str, event: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(event, timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@dataclass
class Outcome:
    """What the application saw around a fault at ``fault_at`` lifted at ``lifted_at``."""

    errors: list[tuple[float, str]]  # (seconds after the fault, exception class)
    first_error: float | None  # seconds from the fault to the first failed operation
    recovery: float | None  # seconds from the lift until every thread succeeded again
    longest_op: float  # the longest operation that ended (seconds)

    def error_classes(self) -> set[str]:
        return {name for _, name in self.errors}


def outcome(
    ops: list[list[Any]],
    fault_at: float,
    lifted_at: float,
    threads: int,
    until: float | None = None,
) -> Outcome:
    """What ``ops`` show, leaving out those ending after ``until`` (close() began)."""
    if until is not None:
        ops = [op for op in ops if op[2] < until]
    errors = sorted((end - fault_at, name) for _, _, end, ok, name, _ in ops if not ok)
    after = [e for e in errors if e[0] >= 0]
    first_error = after[0][0] if after else None
    recovered: dict[int, float] = {}
    for index, start, end, ok, _, _ in ops:
        if ok and start >= lifted_at:
            recovered[index] = min(recovered.get(index, end), end)
    recovery = max(recovered.values()) - lifted_at if len(recovered) == threads else None
    longest = max((end - start for _, start, end, *_ in ops), default=0.0)
    return Outcome(errors, first_error, recovery, longest)


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(step)
