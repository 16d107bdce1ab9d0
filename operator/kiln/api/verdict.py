"""The guide's verdict in a line or two per target, for a person to act on: what to serve and
by how much, what it saves where prices are set, and why each more complex candidate was not
chosen. Pure: the CLI prints it after the table, the report puts it on top."""

from __future__ import annotations

from kiln.api.select import challenge, complexity
from kiln.api.spec import Selection
from kiln.api.status import (
    CandidateStatus,
    Capacity,
    OptimizedModelStatus,
    State,
    TargetStatus,
    shape_text,
)
from kiln.api.summary import money


def verdict(status: OptimizedModelStatus, selection: Selection) -> list[str]:
    lines: list[str] = []
    for target in status.targets:
        if target.state is State.OK:
            lines += _target_verdict(target, selection)
    return lines


def _target_verdict(target: TargetStatus, selection: Selection) -> list[str]:
    served = target.candidate(target.selected) if target.selected else None
    if served is None or served.speedup is None:
        why = (target.selection_reason or "nothing qualified").split(";")[0]
        return [f"{target.name}: keep {target.baseline}: {why}"]
    interval = served.speedup_interval
    around = f" [{interval.low:.2f}-{interval.high:.2f}]" if interval else ""
    head = (
        f"{target.name}: serve {served.name}: {served.speedup:.2f}x{around} the throughput of "
        f"{target.baseline} at batch {shape_text(served.batch_size, served.lengths)}"
    )
    if served.disturbed:
        head += f" (measurement disturbed: {served.disturbed})"
    lines = [head + _savings(target.capacity)]
    rejected = _not_chosen(target, served, selection)
    if rejected:
        lines.append(f"{target.name}: not chosen: " + "; ".join(rejected))
    return lines


def _savings(plan: Capacity | None) -> str:
    if plan is None or plan.selected_replicas is None or plan.baseline_replicas is None:
        return ""
    text = (
        f"; {plan.selected_replicas} replicas instead of {plan.baseline_replicas} "
        f"for {plan.target_throughput:g} samples/s"
    )
    if plan.monthly_savings is not None:
        text += f", saving {money(plan.monthly_savings, plan.currency)} a month"
    return text


def _not_chosen(target: TargetStatus, served: CandidateStatus, selection: Selection) -> list[str]:
    """Each candidate more complex than the served one, and what held it back."""
    rank = complexity(served.backend, served.precision)
    out = []
    for c in target.candidates:
        if c.name == target.baseline or complexity(c.backend, c.precision) <= rank:
            continue
        if c.state is not State.OK:
            out.append(f"{c.name} {c.state.value}" + (f" ({c.reason})" if c.reason else ""))
        elif c.accuracy is None or not c.accuracy.passed:
            out.append(f"{c.name} failed its accuracy gate")
        elif c.throughput is not None:
            verdict = challenge(served, c, selection.objective, selection.prefer_simpler_within)
            why = "; ".join(verdict.reasons) or "not selected"
            out.append(f"{c.name} is {verdict.ratio:.2f}x of it ({why})")
    return out
