"""The operator's decisions, table-driven: one pure decision per target, transient Job
failures retried under the next deterministic name (Degraded, never Failed), and one
policy function per condition."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.api.errors import ErrorKind
from kiln.api.report import JobReport
from kiln.api.request import Stage
from kiln.api.status import Phase, Reason, State, TargetPhase, TargetStatus
from kiln.operator import names, policies
from kiln.operator.conditions import Problem
from kiln.operator.decide import (
    MAX_ATTEMPTS,
    Inputs,
    TargetDecision,
    current_attempt,
    decide_target,
)
from kiln.operator.observed import DeploymentState, JobState
from kiln.operator.plan import plan, request_keys
from kiln.operator.targets import TargetIntent
from tests.unit.test_operator_plan import CONFIG, cond, model, observed, result

GPU = TargetIntent("NVIDIA-A10G", "cuda")
KEY = "req-target-0123456789abcdef"
JOB = names.build_job("lipsync", GPU.name, KEY)
DEPLOY = names.server("lipsync", GPU.name)


def inputs(
    jobs: dict[str, JobState] | None = None, deployments: dict[str, DeploymentState] | None = None
) -> Inputs:
    return Inputs(
        model=model(),
        config=CONFIG,
        artifacts_uri="s3://kiln/artifacts",
        secret="s3",
        fp16=True,
        jobs=jobs or {},
        deployments=deployments or {},
    )


def transient(name: str) -> JobState:
    return JobState(name, failed=True, message="exit 3: storage unreachable", exit_code=3)


def skipped(name: str) -> TargetStatus:
    return TargetStatus(name=name, device="cuda", state=State.SKIPPED, reason="no GPU here")


CASES: list[tuple[str, dict[str, Any], TargetPhase, State | None, int]] = [
    # (case, decide_target arguments, phase, status state, children applied)
    ("no result, no Job", {}, TargetPhase.BUILDING, State.PENDING, 2),
    (
        "no result, Job running",
        {"jobs": {JOB: JobState(JOB)}},
        TargetPhase.BUILDING,
        State.PENDING,
        2,
    ),
    (
        "bad input fails at once",
        {"jobs": {JOB: JobState(JOB, failed=True, message="exit 2: bad", exit_code=2)}},
        TargetPhase.FAILED,
        State.FAILED,
        0,
    ),
    (
        "a crash past backoffLimit fails",
        {"jobs": {JOB: JobState(JOB, failed=True, message="exit 1: Traceback", exit_code=1)}},
        TargetPhase.FAILED,
        State.FAILED,
        0,
    ),
    (
        "a transient failure retries",
        {"jobs": {JOB: transient(JOB)}},
        TargetPhase.RETRYING,
        State.PENDING,
        2,
    ),
    (
        "a pod failed for an outage; the Job retries it",
        {"jobs": {JOB: JobState(JOB, pod_failures=1, message="exit 3: S3 down", exit_code=3)}},
        TargetPhase.RETRYING,
        State.PENDING,
        2,
    ),
    (
        "a pod crashed; the Job retries it, no outage",
        {"jobs": {JOB: JobState(JOB, pod_failures=2, message="exit 137: Error", exit_code=137)}},
        TargetPhase.BUILDING,
        State.PENDING,
        2,
    ),
    (
        "result, not selected",
        {"result": result(GPU.name, "r", None)},
        TargetPhase.BUILT,
        State.OK,
        0,
    ),
    ("result, selected", {"result": result(GPU.name, "r")}, TargetPhase.ROLLING_OUT, State.OK, 2),
    (
        "result, served",
        {
            "result": result(GPU.name, "r"),
            "deployments": {DEPLOY: DeploymentState(DEPLOY, 1, "r")},
        },
        TargetPhase.SERVING,
        State.OK,
        2,
    ),
    (
        "result, old engine still served",
        {
            "result": result(GPU.name, "r"),
            "deployments": {DEPLOY: DeploymentState(DEPLOY, 1, "r-old")},
        },
        TargetPhase.ROLLING_OUT,
        State.OK,
        2,
    ),
    ("skipped result", {"result": skipped(GPU.name)}, TargetPhase.SKIPPED, State.SKIPPED, 0),
    ("stale, never built", {"stale": True}, TargetPhase.STALE, None, 0),
    ("stale", {"stale": True, "previous": result(GPU.name, "r")}, TargetPhase.STALE, State.OK, 0),
]


@pytest.mark.parametrize(
    ("case", "args", "phase", "state", "applied"), CASES, ids=[c[0] for c in CASES]
)
def test_decide_target(
    case: str, args: dict[str, Any], phase: TargetPhase, state: State | None, applied: int
) -> None:
    intent = TargetIntent(GPU.name, "cuda", stale=args.get("stale", False))
    decision = decide_target(
        inputs(args.get("jobs"), args.get("deployments")),
        intent,
        KEY,
        args.get("result"),
        args.get("previous"),
    )
    assert decision.phase is phase, case
    assert (decision.status.state if decision.status else None) is state
    assert len(decision.apply) == applied
    if decision.status is not None:
        assert decision.status.phase is phase  # users see where each target stands


def test_transient_failures_retry_under_the_next_name_then_wait() -> None:
    def name(n: int) -> str:
        return names.build_job("lipsync", GPU.name, KEY, n)

    assert name(0) == JOB
    assert name(1) == f"{JOB}-r1"
    jobs = {name(0): transient(name(0))}
    attempt = current_attempt(jobs, name)
    assert (attempt.number, attempt.job, attempt.previous) == (1, None, jobs[name(0)])
    decision = decide_target(inputs(jobs), GPU, KEY, None, None)
    job = next(m for m in decision.apply if m["kind"] == "Job")
    assert job["metadata"]["name"] == name(1)
    assert decision.problem is not None
    assert decision.problem.reason is Reason.STORAGE_UNAVAILABLE
    # A report that says "transient" counts even when the pod's exit code is gone.
    report = JobReport(
        stage=Stage.TARGET, error="s3://x: unreachable", error_kind=ErrorKind.TRANSIENT
    )
    assert (
        current_attempt({name(0): JobState(name(0), failed=True, report=report)}, name).number == 1
    )
    # Attempts are bounded: the last one stays, Degraded, and no further Job is started.
    every = {name(n): transient(name(n)) for n in range(MAX_ATTEMPTS)}
    last = decide_target(inputs(every), GPU, KEY, None, None)
    assert last.phase is TargetPhase.RETRYING
    assert {m["metadata"]["name"] for m in last.apply if m["kind"] == "Job"} == {
        name(MAX_ATTEMPTS - 1)
    }


def test_a_transient_export_failure_is_degraded_never_failed() -> None:
    ekey, _ = request_keys(observed(), CONFIG)
    first = names.export_job("lipsync", ekey)
    p = plan(observed(jobs={first: transient(first)}), CONFIG)
    assert p.status is not None
    assert p.status.phase is Phase.EXPORTING
    assert cond(p.status, "Degraded").reason == "StorageUnavailable"
    assert [m["metadata"]["name"] for m in p.apply if m["kind"] == "Job"] == [
        names.export_job("lipsync", ekey, 1)
    ]
    assert p.requeue_after == CONFIG.requeue_seconds


def test_an_export_pod_failing_for_an_outage_is_degraded_at_once_in_the_same_job() -> None:
    ekey, _ = request_keys(observed(), CONFIG)
    first = names.export_job("lipsync", ekey)
    job = JobState(first, pod_failures=1, message="exit 3: S3 down", exit_code=3)
    p = plan(observed(jobs={first: job}), CONFIG)
    assert p.status is not None
    degraded = cond(p.status, "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "StorageUnavailable")
    assert "1 pod(s) failed, the last with exit 3: S3 down" in degraded.message
    # The same Job goes on: its own backoff retries the pod, no new attempt is started.
    assert [m["metadata"]["name"] for m in p.apply if m["kind"] == "Job"] == [first]


def test_a_building_target_is_pending_not_skipped() -> None:
    p = plan(observed(export_done=True), CONFIG)
    assert p.status is not None
    states = {(t.state, t.phase) for t in p.status.targets}
    assert states == {(State.PENDING, TargetPhase.BUILDING)}


def decision(phase: TargetPhase, state: State = State.OK) -> TargetDecision:
    status = result(GPU.name, "r") if state is State.OK else skipped(GPU.name)
    return TargetDecision(phase, status)


@pytest.mark.parametrize(
    ("phases", "built", "benchmarked", "ready"),
    [
        ([TargetPhase.BUILDING, TargetPhase.BUILT], "Building", "Building", "Building"),
        ([TargetPhase.SERVING, TargetPhase.BUILT], "Built", "Benchmarked", "Serving"),
        ([TargetPhase.ROLLING_OUT], "Built", "Benchmarked", "RollingOut"),
        ([TargetPhase.BUILT, TargetPhase.STALE], "Built", "Benchmarked", "NoImprovement"),
    ],
)
def test_condition_policies(
    phases: list[TargetPhase], built: str, benchmarked: str, ready: str
) -> None:
    decisions = [decision(p) for p in phases]
    assert policies.built(decisions).reason == built
    assert policies.benchmarked(decisions).reason == benchmarked
    assert policies.ready(decisions).reason == ready


def test_nothing_measured_and_degraded_reasons() -> None:
    only_skipped = [decision(TargetPhase.SKIPPED, State.SKIPPED)]
    assert policies.benchmarked(only_skipped).reason == "NothingMeasured"
    one = [Problem(Reason.TARGET_STALE, "a")]
    assert policies.degraded(one).reason == "TargetStale"
    two = [*one, Problem(Reason.BUILD_FAILED, "b")]
    assert (policies.degraded(two).reason, policies.degraded(two).message) == ("Problems", "a; b")
    assert policies.degraded([]).status is False
