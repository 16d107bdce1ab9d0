"""How one device call's seconds are shared among its steps (pure, so every rule is tested).

Each step has a box: the seconds it is owed. A step may run for whatever is left of the call's
budget less the boxes of the steps still to come, so a step that finishes early leaves its
slack to the ones after it, and a slow one cannot eat what the later ones are owed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

MIN_SECONDS = 5.0  # less than this is not worth starting a step for


class StepState(StrEnum):
    OK = "OK"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


@dataclass(frozen=True)
class Step:
    name: str
    box: int  # seconds owed to this step
    needs: str | None = None  # a step that must have succeeded first
    gpu: bool = True  # needs a CUDA device (SKIPPED without one, and in a dry run)


def limit(steps: Sequence[Step], index: int, left: float) -> float:
    """Seconds step `index` may run with `left` seconds of the budget remaining."""
    owed_later = sum(s.box for s in steps[index + 1 :])
    return max(0.0, left - owed_later)


def skip_reason(
    step: Step, states: Mapping[str, StepState], cuda_reason: str, seconds: float
) -> str | None:
    """Why `step` is not run, or None: its prerequisite failed, no GPU, or no time left."""
    if step.needs is not None and states.get(step.needs) is not StepState.OK:
        return f"{step.needs} did not succeed"
    if step.gpu and cuda_reason:
        return cuda_reason
    if seconds < MIN_SECONDS:
        return f"out of time: {seconds:.0f} s of the call's budget left for it"
    return None


def fits(steps: Sequence[Step], budget: float) -> bool:
    """True when every step's box fits in the budget together."""
    return sum(s.box for s in steps) <= budget
