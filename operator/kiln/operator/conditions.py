"""Conditions the Kubernetes way (pure): one entry per type, observedGeneration on each, and a
lastTransitionTime that changes only when the status flips."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.api.status import Condition, ConditionType, Reason

TYPES = tuple(ConditionType)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=since,
    )
    merged = [new if c.type == type_ else c for c in conditions]
    if old is None:
        merged.append(new)
    return sorted(merged, key=lambda c: TYPES.index(c.type) if c.type in TYPES else len(TYPES))


def flips(before: list[Condition], after: list[Condition]) -> list[Condition]:
    """Conditions whose status or reason changed: each is worth a Kubernetes Event."""
    old = {c.type: (c.status, c.reason) for c in before}
    return [c for c in after if old.get(c.type) != (c.status, c.reason)]


@dataclass(frozen=True)
class Verdict:
    """One condition as a policy function decided it."""

    type: ConditionType
    status: bool
    reason: Reason
    message: str


@dataclass(frozen=True)
class Problem:
    """Something that degrades the resource without stopping it."""

    reason: Reason
    message: str


def record(
    conditions: list[Condition], verdicts: list[Verdict], generation: int | None, now: str
) -> list[Condition]:
    for v in verdicts:
        conditions = set_condition(
            conditions, v.type, v.status, v.reason, v.message, generation, now
        )
    return conditions
