"""Pure functions from per-target results to the resource-level phase, summary and headline."""

from __future__ import annotations

from typing import TypedDict

from kiln.api.status import CandidateStatus, Phase, State, TargetStatus


class Headline(TypedDict):
    best: str | None
    best_speedup: str | None
    ready_targets: str


def phase_of(targets: list[TargetStatus]) -> Phase:
    if any(t.selected for t in targets):
        return Phase.READY
    if targets and all(t.state is State.SKIPPED for t in targets):
        return Phase.FAILED
    if any(t.state is State.FAILED for t in targets):
        return Phase.FAILED
    return Phase.NO_IMPROVEMENT


def best_selected(targets: list[TargetStatus]) -> tuple[CandidateStatus, TargetStatus] | None:
    """The selected candidate with the highest speedup over its own target's baseline."""
    best: tuple[CandidateStatus, TargetStatus] | None = None
    for target in targets:
        chosen = target.candidate(target.selected) if target.selected else None
        if chosen is None or chosen.speedup is None:
            continue
        if best is None or chosen.speedup > (best[0].speedup or 0.0):
            best = (chosen, target)
    return best


def headline(targets: list[TargetStatus]) -> Headline:
    """`best`, `bestSpeedup` and `readyTargets` for the printer columns."""
    best = best_selected(targets)
    ready = sum(1 for t in targets if t.selected)
    return Headline(
        best=f"{best[0].name}@{best[1].name}" if best else None,
        best_speedup=f"{best[0].speedup:.2f}x" if best else None,
        ready_targets=f"{ready}/{len(targets)}",
    )


def summary_of(targets: list[TargetStatus]) -> str:
    """One line: the best verified speedup and where, or why there is none."""
    best = best_selected(targets)
    if best is not None:
        chosen, target = best
        return (
            f"{chosen.speedup:.2f}x {chosen.name} on {target.name} "
            f"(batch {chosen.batch_size}, vs {target.baseline})"
        )
    reasons = [f"{t.name}: {t.selection_reason or t.reason}" for t in targets]
    return "no candidate selected (" + "; ".join(reasons) + ")" if reasons else "no targets"
