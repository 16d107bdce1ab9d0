"""Pure functions from per-target results to the resource's summary, headline and status."""

from __future__ import annotations

from typing import Any, TypedDict

from kiln.api.status import (
    CandidateStatus,
    OptimizedModelStatus,
    Phase,
    State,
    TargetStatus,
    shape_text,
)


class Headline(TypedDict):
    best: str | None
    best_speedup: str | None
    ready_targets: str
    cheapest_target: str | None
    savings: str | None


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


def cheapest(targets: list[TargetStatus]) -> TargetStatus | None:
    """The target whose selected engine meets serving.targetThroughput for the least money."""
    priced = [
        t
        for t in targets
        if t.selected and t.capacity and t.capacity.selected_monthly_cost is not None
    ]
    return min(priced, key=_monthly, default=None)


def _monthly(target: TargetStatus) -> float:
    return target.capacity.selected_monthly_cost or 0.0 if target.capacity else 0.0


def money(amount: float, currency: str = "$") -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}{currency}{abs(amount):,.0f}"


def _speedup(chosen: CandidateStatus) -> str:
    """A disturbed number never reads as a clean one, not even in a printer column."""
    return f"{chosen.speedup:.2f}x" + (" (disturbed)" if chosen.disturbed else "")


def headline(targets: list[TargetStatus]) -> Headline:
    """`best`, `bestSpeedup`, `readyTargets` and `savings` for the printer columns."""
    best = best_selected(targets)
    ready = sum(1 for t in targets if t.selected)
    # A skipped target (no such device here, no runtime) could never be ready: counting it
    # would read as a failure to come. It is shown apart, not hidden.
    skipped = sum(1 for t in targets if t.state is State.SKIPPED)
    counted = f"{ready}/{len(targets) - skipped}"
    low = cheapest(targets)
    plan = low.capacity if low else None
    saved = plan.monthly_savings if plan else None
    return Headline(
        best=f"{best[0].name}@{best[1].name}" if best else None,
        best_speedup=_speedup(best[0]) if best else None,
        ready_targets=f"{counted} ({skipped} skipped)" if skipped else counted,
        cheapest_target=low.name if low else None,
        savings=None if plan is None or saved is None else f"{money(saved, plan.currency)}/mo",
    )


def summary_of(targets: list[TargetStatus]) -> str:
    """One line: the best verified speedup and where, or why there is none."""
    best = best_selected(targets)
    if best is not None:
        chosen, target = best
        caveat = f"; measurement disturbed: {chosen.disturbed}" if chosen.disturbed else ""
        return (
            f"{chosen.speedup:.2f}x {chosen.name} on {target.name} "
            f"(batch {shape_text(chosen.batch_size, chosen.lengths)}, "
            f"vs {target.baseline}{caveat})"
        )
    reasons = [f"{t.name}: {t.selection_reason or t.reason}" for t in targets]
    return "no candidate selected (" + "; ".join(reasons) + ")" if reasons else "no targets"


def resource_status(
    phase: Phase,
    targets: list[TargetStatus],
    message: str | None = None,
    **fields: Any,
) -> OptimizedModelStatus:
    """The whole status block: the headline columns and the one-line summary follow the
    targets (or, with none, the message). The one builder of a status, local or in-cluster."""
    fields.setdefault("summary", summary_of(targets) if targets else message)
    return OptimizedModelStatus(
        phase=phase, message=message, targets=targets, **headline(targets), **fields
    )
