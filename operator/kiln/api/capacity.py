"""Capacity and money (pure): how many replicas serving.targetThroughput needs on a target
with the baseline and with the selected engine, what each costs a month, what the
optimization saves, and how soon the build pays for itself. The guide decides in $/month;
these are its numbers, from the throughput measured at the decision batch size."""

from __future__ import annotations

import math

from kiln.api.spec import OptimizedModelSpec
from kiln.api.status import Capacity, TargetStatus

# A throughput measured at 99.9999 % of what is needed is not short by a replica.
_EPSILON = 1e-9


def replicas_needed(target_throughput: float, per_replica: float, utilization: float) -> int:
    """Replicas that sustain `target_throughput` with each one planned at `utilization` of
    what it was measured to do; at least one."""
    if per_replica <= 0:
        raise ValueError("per_replica: a measured throughput must be positive")
    return max(1, math.ceil(target_throughput / (per_replica * utilization) - _EPSILON))


def monthly_cost(replicas: int, hourly: float, hours_per_month: float) -> float:
    return round(replicas * hourly * hours_per_month, 2)


def break_even_hours(build_cost: float, monthly_savings: float, hours_per_month: float) -> float:
    """Hours of serving until the savings repay the build; infinite without savings."""
    if monthly_savings <= 0:
        return math.inf
    return build_cost / (monthly_savings / hours_per_month)


def usable_throughput(
    result: TargetStatus, name: str | None, batch: int, budget_ms: float | None
) -> tuple[float | None, str | None]:
    """A candidate's measured throughput at `batch`, or why it cannot be planned on: not
    measured there, or over the latency budget."""
    candidate = result.candidate(name) if name else None
    if candidate is None:
        return None, None
    bench = candidate.measured_at(batch)
    if bench is None or bench.throughput <= 0:
        return None, f"{candidate.name} has no measurement at batch {batch}"
    if budget_ms is not None and bench.latency_ms.p99 > budget_ms:
        return None, (
            f"{candidate.name}: p99 {bench.latency_ms.p99:.3g} ms at batch {batch} is over the "
            f"latency budget of {budget_ms:g} ms"
        )
    return bench.throughput, None


def capacity(result: TargetStatus, spec: OptimizedModelSpec) -> Capacity | None:
    """The target's capacity plan, or None when the spec sets no serving.targetThroughput."""
    serving, cost = spec.serving, spec.cost
    wanted = serving.target_throughput
    if wanted is None:
        return None
    batch = spec.decision_batch_size()
    budget = spec.selection.latency_budget_ms
    notes: list[str] = []
    replicas: dict[str, int | None] = {}
    for role, name in (("baseline", result.baseline), ("selected", result.selected)):
        measured, note = usable_throughput(result, name, batch, budget)
        replicas[role] = (
            None if measured is None else replicas_needed(wanted, measured, serving.utilization)
        )
        notes += [note] if note else []
    plan = Capacity(
        target_throughput=wanted,
        utilization=serving.utilization,
        batch_size=batch,
        currency=cost.currency,
        baseline_replicas=replicas["baseline"],
        selected_replicas=replicas["selected"],
    )
    price = cost.hourly.get(result.name)
    if price is None:
        notes += [f"no price for {result.name} in cost.hourly"] if cost.hourly else []
        return plan.model_copy(update={"note": "; ".join(notes) or None})
    return _priced(plan, price, spec, result.build_seconds, notes)


def _priced(
    plan: Capacity,
    price: float,
    spec: OptimizedModelSpec,
    build_seconds: float | None,
    notes: list[str],
) -> Capacity:
    hours = spec.cost.hours_per_month
    base = (
        None
        if plan.baseline_replicas is None
        else monthly_cost(plan.baseline_replicas, price, hours)
    )
    chosen = (
        None
        if plan.selected_replicas is None
        else monthly_cost(plan.selected_replicas, price, hours)
    )
    savings = None if base is None or chosen is None else round(base - chosen, 2)
    build = None if build_seconds is None else round(build_seconds / 3600.0 * price, 4)
    even: float | None = None
    if savings is not None and build is not None:
        hours_to_even = break_even_hours(build, savings, hours)
        if math.isinf(hours_to_even):
            notes.append("no savings: the build does not pay for itself")
        else:
            even = round(hours_to_even, 3)
    return plan.model_copy(
        update={
            "hourly_price": price,
            "baseline_monthly_cost": base,
            "selected_monthly_cost": chosen,
            "monthly_savings": savings,
            "build_cost": build,
            "break_even_hours": even,
            "note": "; ".join(notes) or None,
        }
    )
