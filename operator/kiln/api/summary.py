"""Pure functions from per-target results to the resource-level phase and summary line."""

from __future__ import annotations

from kiln.api.status import Phase, State, TargetStatus


def phase_of(targets: list[TargetStatus]) -> Phase:
    if any(t.selected for t in targets):
        return Phase.READY
    if targets and all(t.state is State.SKIPPED for t in targets):
        return Phase.FAILED
    if any(t.state is State.FAILED for t in targets):
        return Phase.FAILED
    return Phase.NO_IMPROVEMENT


def summary_of(targets: list[TargetStatus]) -> str:
    """One line: the best verified speedup and where, or why there is none."""
    best: tuple[float, str] | None = None
    for target in targets:
        chosen = target.candidate(target.selected) if target.selected else None
        if chosen is not None and chosen.speedup is not None:
            line = (
                f"{chosen.speedup:.2f}x {chosen.name} on {target.name} "
                f"(batch {chosen.batch_size}, vs {target.baseline})"
            )
            if best is None or chosen.speedup > best[0]:
                best = (chosen.speedup, line)
    if best is not None:
        return best[1]
    reasons = [f"{t.name}: {t.selection_reason or t.reason}" for t in targets]
    return "no candidate selected (" + "; ".join(reasons) + ")" if reasons else "no targets"
