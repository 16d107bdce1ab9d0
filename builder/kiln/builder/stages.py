"""Typed stage results: OK, SKIPPED (with reason) or FAILED (with reason)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from kiln.api.status import State


@dataclass
class StageResult:
    stage: str
    state: State = State.OK
    reason: str | None = None
    seconds: float = 0.0
    cached: bool = False
    detail: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        note = " (cached)" if self.cached else ""
        why = f": {self.reason}" if self.reason else ""
        return f"{self.stage:<10} {self.state.value:<8} {self.seconds:6.1f}s{note}{why}"


class StageFailedError(Exception):
    """A stage failed for a reason that is not the user's input (exporter parity, a crash)."""

    def __init__(self, result: StageResult) -> None:
        super().__init__(f"{result.stage}: {result.reason}")
        self.result = result


@contextmanager
def timed(result: StageResult) -> Iterator[StageResult]:
    started = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - started
