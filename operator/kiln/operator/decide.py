"""The plan's decisions, one pure function each: the export step and one decision per target.

Each returns a typed decision (a phase from `kiln.api.status.TargetPhase`, the children to
apply, the status to show and the problem to report), so the plan only chains them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kiln.api.errors import ErrorKind
from kiln.api.phase import result_phase
from kiln.api.request import BuildRequest
from kiln.api.select import reselect
from kiln.api.spec import OptimizedModel
from kiln.api.status import Reason, State, TargetPhase, TargetStatus
from kiln.operator import names, render
from kiln.operator.conditions import Problem
from kiln.operator.config import OperatorConfig
from kiln.operator.observed import DeploymentState, JobState
from kiln.operator.targets import TargetIntent

Manifest = dict[str, Any]

# Builder Jobs started for one request after transient failures (each retries its pod with
# backoff first). Past this the target waits, Degraded, until the failed Jobs expire (TTL).
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Inputs:
    """What every decision of one pass shares."""

    model: OptimizedModel
    config: OperatorConfig
    artifacts_uri: str
    secret: str | None
    fp16: bool
    jobs: Mapping[str, JobState]
    deployments: Mapping[str, DeploymentState]

    def request(self, key: str) -> BuildRequest:
        return BuildRequest.for_model(self.model, self.artifacts_uri, key, self.fp16)


@dataclass(frozen=True)
class Attempt:
    number: int
    name: str
    job: JobState | None
    previous: JobState | None = None  # the attempt before, which failed transiently

    @property
    def exhausted(self) -> bool:
        return self.job is not None and self.job.failed and is_transient(self.job)


def is_transient(job: JobState) -> bool:
    return job.failure is ErrorKind.TRANSIENT


def current_attempt(jobs: Mapping[str, JobState], name_of: Callable[[int], str]) -> Attempt:
    """The attempt in progress: a Job that failed for a transient reason (storage unreachable)
    is followed by a new one under the next deterministic name, up to MAX_ATTEMPTS."""
    previous: JobState | None = None
    for number in range(MAX_ATTEMPTS):
        job = jobs.get(name_of(number))
        if job is None or not job.failed or not is_transient(job) or number == MAX_ATTEMPTS - 1:
            return Attempt(number, name_of(number), job, previous)
        previous = job
    raise AssertionError("unreachable: the last attempt always returns")


class JobPhase(StrEnum):
    """Where the builder Job of one request stands (the export's, or a target's)."""

    DONE = "Done"  # its output is in storage
    RUNNING = "Running"
    RETRYING = "Retrying"
    FAILED = "Failed"


@dataclass(frozen=True)
class ExportDecision:
    phase: JobPhase
    message: str
    apply: list[Manifest] = field(default_factory=list)
    problem: Problem | None = None  # transient trouble, shown as Degraded

    def problems(self) -> list[Problem]:
        return [self.problem] if self.problem else []


def job_outcome(attempt: Attempt, label: str) -> tuple[JobPhase, str]:
    """Where a builder Job without a stored result stands (Running, Retrying after transient
    failures, or Failed), and the words for it; `label` names the Job ("export Job")."""
    job = attempt.job
    if attempt.exhausted and job is not None:
        return JobPhase.RETRYING, f"{label} {attempt.name} gave up for now: {job.message}"
    if job is not None and job.failed:
        return JobPhase.FAILED, job.message
    if job is not None and job.retrying and job.exit_code is not None:
        # The Job's own backoff is retrying a failed pod: an outage shows now, not only once
        # the Job gives up; a crashed pod is retried too, but is no outage.
        failed = f"{job.pod_failures} pod(s) failed, the last with {job.message}"
        phase = JobPhase.RETRYING if is_transient(job) else JobPhase.RUNNING
        return phase, f"{label} {attempt.name} is retrying: {failed}"
    if attempt.previous is not None:
        why = f"after a transient failure: {attempt.previous.message}"
        return (
            JobPhase.RETRYING,
            f"{label} {attempt.name} is running (attempt {attempt.number + 1} {why})",
        )
    return JobPhase.RUNNING, f"{label} {attempt.name} is running"


def job_children(
    inputs: Inputs, key: str, intent: TargetIntent | None, attempt: Attempt
) -> list[Manifest]:
    """The request ConfigMap and the Job of this attempt (the export Job when `intent` is
    None): re-applied on every pass, whatever the Job's state, as the whole desired state."""
    request = inputs.request(key)
    return [
        render.request_configmap(inputs.model, request),
        render.builder_job(
            inputs.config, inputs.model, request, intent, inputs.secret, attempt.number
        ),
    ]


def decide_export(inputs: Inputs, key: str, done: bool) -> ExportDecision:
    if done:
        return ExportDecision(JobPhase.DONE, "ONNX and Q/DQ models are in the artifact store")
    name = inputs.model.metadata.name
    attempt = current_attempt(inputs.jobs, lambda n: names.export_job(name, key, n))
    apply = job_children(inputs, key, None, attempt)
    phase, why = job_outcome(attempt, "export Job")
    if phase is JobPhase.RETRYING:
        return ExportDecision(phase, why, apply, Problem(Reason.STORAGE_UNAVAILABLE, why))
    if phase is JobPhase.RUNNING:
        why = "the export Job is running"
    return ExportDecision(phase, why, apply)


@dataclass(frozen=True)
class TargetDecision:
    phase: TargetPhase
    status: TargetStatus | None  # None: a stale target that never had a status
    apply: list[Manifest] = field(default_factory=list)
    scale_to_zero: str | None = None
    problem: Problem | None = None


def decide_target(
    inputs: Inputs,
    intent: TargetIntent,
    key: str,
    result: TargetStatus | None,
    previous: TargetStatus | None,
) -> TargetDecision:
    if intent.stale:
        return _stale(inputs, intent, previous)
    if result is None:
        return _unbuilt(inputs, intent, key)
    return _built(inputs, intent, key, result)


def _stale(inputs: Inputs, intent: TargetIntent, previous: TargetStatus | None) -> TargetDecision:
    deploy = names.server(inputs.model.metadata.name, intent.name)
    kept = (
        previous.model_copy(update={"stale": True, "ready_replicas": 0, "phase": TargetPhase.STALE})
        if previous is not None
        else None
    )
    return TargetDecision(
        TargetPhase.STALE,
        kept,
        scale_to_zero=deploy if deploy in inputs.deployments else None,
        problem=Problem(
            Reason.TARGET_STALE,
            f"target {intent.name}: no node of this GPU type is left; scaled to zero",
        ),
    )


def _unbuilt(inputs: Inputs, intent: TargetIntent, key: str) -> TargetDecision:
    """No stored result: its builder Job runs, is retried, or failed."""
    name = inputs.model.metadata.name
    attempt = current_attempt(inputs.jobs, lambda n: names.build_job(name, intent.name, key, n))
    outcome, why = job_outcome(attempt, "builder Job")

    def status(state: State, phase: TargetPhase, reason: str) -> TargetStatus:
        return TargetStatus(
            name=intent.name,
            device=intent.device,
            state=state,
            phase=phase,
            reason=reason,
            job=attempt.name,
        )

    if outcome is JobPhase.FAILED:
        failed = status(
            State.FAILED, TargetPhase.FAILED, f"builder Job {attempt.name} failed: {why}"
        )
        problem = Problem(Reason.BUILD_FAILED, f"target {intent.name}: builder Job failed")
        return TargetDecision(TargetPhase.FAILED, failed, problem=problem)
    apply = job_children(inputs, key, intent, attempt)
    if outcome is JobPhase.RETRYING:
        retrying = status(State.PENDING, TargetPhase.RETRYING, why)
        problem = Problem(Reason.STORAGE_UNAVAILABLE, f"target {intent.name}: {why}")
        return TargetDecision(TargetPhase.RETRYING, retrying, apply, problem=problem)
    running = status(State.PENDING, TargetPhase.BUILDING, why)
    return TargetDecision(TargetPhase.BUILDING, running, apply)


def _built(inputs: Inputs, intent: TargetIntent, key: str, stored: TargetStatus) -> TargetDecision:
    """A stored result: re-decided with the current selection rules, served if selected."""
    model = inputs.model
    result = reselect(stored, model.spec)
    deploy = names.server(model.metadata.name, intent.name)
    state = inputs.deployments.get(deploy)
    attempt = current_attempt(
        inputs.jobs, lambda n: names.build_job(model.metadata.name, intent.name, key, n)
    )
    extra: dict[str, Any] = {"job": attempt.name}
    apply: list[Manifest] = []
    serves = result.selected is not None and result.state is State.OK
    if serves:
        apply = [
            render.server_deployment(inputs.config, model, intent, result, inputs.secret),
            render.server_service(model, intent),
        ]
    if serves or state is not None:
        # Without a new selection, the previous good engine keeps serving.
        extra.update(
            deployment=deploy,
            endpoint=render.endpoint(model, intent),
            ready_replicas=state.ready_replicas if state else 0,
        )
    phase = result_phase(result)
    if phase is TargetPhase.SELECTED:  # in a cluster, selected means served, or on its way
        serving = (
            # The engine a server runs is named by its result's key (a pod-template annotation).
            state is not None and state.ready_replicas > 0 and state.engine_key == result.cache_key
        )
        phase = TargetPhase.SERVING if serving else TargetPhase.ROLLING_OUT
    failed = result.state is State.FAILED
    problem = (
        Problem(Reason.BUILD_FAILED, f"target {intent.name}: {result.reason}") if failed else None
    )
    extra["phase"] = phase
    return TargetDecision(phase, result.model_copy(update=extra), apply, problem=problem)
