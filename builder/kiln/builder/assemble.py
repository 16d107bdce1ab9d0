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


def with_speedups(
    runs: list[BatchBenchmark], baseline: list[BatchBenchmark]
) -> list[BatchBenchmark]:
    """Each measurement's throughput over the baseline's at the same batch size, measured in
    the same run."""
    base = {r.batch_size: r.throughput for r in baseline}
    return [
        r.model_copy(update={"speedup": r.throughput / base[r.batch_size]})
        if r.batch_size in base
        else r
        for r in runs
    ]


def candidate_status(
    found: Found, baseline: list[BatchBenchmark], decision: int
) -> CandidateStatus:
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
    benchmarks = with_speedups(found.benchmarks, baseline)
    status = status.model_copy(
        update={
            "artifact": found.built.artifact,
            "cached": found.built.cached,
            "build_seconds": found.built.seconds,
            "accuracy": found.accuracy,
            "benchmarks": benchmarks,
        }
    )
    if found.failure is not None:
        return status.model_copy(update={"state": State.FAILED, "reason": found.failure})
    headline = next((r for r in benchmarks if r.batch_size == decision), None)
    if headline is None:
        return status
    return status.model_copy(
        update={
            "batch_size": headline.batch_size,
            "latency_ms": headline.latency_ms,
            "throughput": headline.throughput,
            "speedup": headline.speedup,
        }
    )


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
        candidates=[candidate_status(f, [], 0) for f in found],
    )


def measured_target(
    target: TargetPlan,
    env: Environment,
    baseline: str,
    found: list[Found],
    decision: int,
    key: str,
    result_uri: str,
) -> TargetStatus:
    """Selection is applied afterwards (kiln.api.select.reselect): it is not part of the key."""
    base = next((f.benchmarks for f in found if f.plan.name == baseline), [])
    return TargetStatus(
        name=target.name,
        device=target.device,
        state=State.OK,
        baseline=baseline,
        cache_key=key,
        result=result_uri,
        environment=env,
        candidates=[candidate_status(f, base, decision) for f in found],
    )
