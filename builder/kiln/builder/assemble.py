"""The target's status from what its steps found (pure): one place turns builds, accuracy
results and measurements into the `CandidateStatus` and `TargetStatus` records."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.api.status import (
    AccuracyResult,
    BatchBenchmark,
    CandidateStatus,
    Environment,
    State,
    TargetStatus,
)
from kiln.builder.candidates import CandidatePlan
from kiln.builder.engines import Built
from kiln.builder.environment import TargetPlan


@dataclass(frozen=True)
class Found:
    """One candidate after build, accuracy check and benchmark; `failure` is the first step's
    reason that stopped it (later steps did not run for it)."""

    plan: CandidatePlan
    key: str
    built: Built | None = None  # None: skipped, never built
    accuracy: AccuracyResult | None = None
    benchmarks: list[BatchBenchmark] = field(default_factory=list)
    failure: str | None = None


def candidate_status(found: Found) -> CandidateStatus:
    """Speedups were measured against the baseline in the same rounds (kiln.builder.
    benchmark); the headline numbers are filled in by kiln.api.select.reselect, from the
    decision batch size's benchmarks."""
    plan = found.plan
    status = CandidateStatus(
        name=plan.name,
        backend=plan.backend,
        precision=plan.precision,
        device=plan.device,
        state=State.OK,
        cache_key=found.key,
    )
    if found.built is None:
        return status.model_copy(update={"state": State.SKIPPED, "reason": plan.skip})
    status = status.model_copy(
        update={
            "artifact": found.built.artifact,
            "artifact_reused": found.built.cached,
            "build_seconds": found.built.seconds,
            "accuracy": found.accuracy,
            "benchmarks": found.benchmarks,
            "note": found.built.note,
        }
    )
    if found.failure is not None:
        return status.model_copy(update={"state": State.FAILED, "reason": found.failure})
    return status


def skipped_target(
    target: TargetPlan, env: Environment, baseline: str, found: list[Found]
) -> TargetStatus:
    # Every candidate of a skipped target carries the target's reason (candidates.py).
    return TargetStatus(
        name=target.name,
        device=target.device,
        state=State.SKIPPED,
        reason=target.skip,
        baseline=baseline,
        environment=env,
        candidates=[candidate_status(f) for f in found],
    )


def measured_target(
    target: TargetPlan,
    env: Environment,
    baseline: str,
    found: list[Found],
    key: str,
    result_uri: str,
) -> TargetStatus:
    """Headline numbers and selection are applied afterwards (kiln.api.select.reselect): they
    are not part of the key."""
    return TargetStatus(
        name=target.name,
        device=target.device,
        state=State.OK,
        baseline=baseline,
        cache_key=key,
        result=result_uri,
        environment=env,
        candidates=[candidate_status(f) for f in found],
    )
