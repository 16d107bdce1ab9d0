"""observe -> **plan** -> apply. Everything here is pure: what the cluster and storage look like
in, the whole desired state (children to apply, status, events) out. Re-run on every pass: the
plan is the complete desired state, never a delta, so a missed event or a restart only delays
convergence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.api.keys import cache_key
from kiln.api.select import select
from kiln.api.spec import Backend, OptimizedModel, Precision
from kiln.api.status import Condition, OptimizedModelStatus, Phase, State, TargetStatus
from kiln.api.summary import headline, summary_of
from kiln.operator import names, render
from kiln.operator.conditions import flips, set_condition
from kiln.operator.config import OperatorConfig
from kiln.operator.targets import desired_targets

Manifest = dict[str, Any]


@dataclass(frozen=True)
class JobState:
    name: str
    succeeded: bool = False
    failed: bool = False
    message: str = ""  # termination message, or the reason Kubernetes gave


@dataclass(frozen=True)
class DeploymentState:
    name: str
    ready_replicas: int = 0
    engine_key: str | None = None


@dataclass(frozen=True)
class Observed:
    model: OptimizedModel
    status: OptimizedModelStatus | None
    gpu_types: dict[str, int]
    now: str
    fingerprint: str | None = None  # of the source and calibration objects in storage
    input_error: tuple[str, str] | None = None  # (field, message): the user must fix it
    storage_error: str | None = None  # transient: retried, not a failure
    export_done: bool = False
    results: dict[str, TargetStatus] = field(default_factory=dict)  # by request key
    jobs: dict[str, JobState] = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)


@dataclass
class Plan:
    apply: list[Manifest] = field(default_factory=list)
    scale_to_zero: list[str] = field(default_factory=list)  # Deployments of stale targets
    status: OptimizedModelStatus | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None


def artifacts_uri(model: OptimizedModel, config: OperatorConfig) -> str | None:
    return model.spec.artifacts.uri or config.artifacts_uri


def wants_fp16(model: OptimizedModel, gpu_types: dict[str, int]) -> bool:
    spec = model.spec
    gpu = bool(gpu_types) and (
        not spec.targets.gpu_types or any(t in gpu_types for t in spec.targets.gpu_types)
    )
    return (
        gpu
        and Precision.FP16 in spec.precisions
        and (Backend.ONNXRUNTIME in spec.backends or Backend.TENSORRT in spec.backends)
    )


def export_key(model: OptimizedModel, fingerprint: str, config: OperatorConfig, fp16: bool) -> str:
    spec = model.spec
    return cache_key(
        "req-export",
        source=spec.source.to_wire(),
        inputs=[t.to_wire() for t in spec.inputs],
        outputs=spec.outputs,
        opset=spec.opset,
        precisions=sorted(spec.precisions),
        calibration=spec.calibration.to_wire() if spec.calibration else None,
        fingerprint=fingerprint,
        image=config.builder_image,
        fp16=fp16,
    )


def target_key(model: OptimizedModel, target: str, fingerprint: str, config: OperatorConfig) -> str:
    # Selection and serving are left out: changing them re-decides or re-rolls, never rebuilds.
    spec = model.spec.to_wire()
    for decided_later in ("selection", "serving", "targets"):
        spec.pop(decided_later, None)
    return cache_key(
        "req-target", spec=spec, target=target, fingerprint=fingerprint, image=config.builder_image
    )


def request_keys(observed: Observed, config: OperatorConfig) -> tuple[str, dict[str, str]]:
    """(export request key, target name -> request key) for a known fingerprint."""
    assert observed.fingerprint is not None
    fp16 = wants_fp16(observed.model, observed.gpu_types)
    intents, _ = desired_targets(
        observed.model.spec.targets, observed.gpu_types, _previous(observed)
    )
    keys = {
        i.name: target_key(observed.model, i.name, observed.fingerprint, config) for i in intents
    }
    return export_key(observed.model, observed.fingerprint, config, fp16), keys


def _previous(observed: Observed) -> list[str]:
    return [t.name for t in observed.status.targets] if observed.status else []


def plan(observed: Observed, config: OperatorConfig) -> Plan:
    model = observed.model
    gen = model.metadata.generation
    old = observed.status.conditions if observed.status else []
    conds = list(old)
    out = Plan()

    def cond(type_: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, ok, reason, message, gen, observed.now)

    def finish(phase: Phase, targets: list[TargetStatus], message: str | None = None) -> Plan:
        out.status = resource_status(observed.status, phase, gen, targets, conds, message)
        out.events += transition_events(old, conds)
        return out

    if artifacts_uri(model, config) is None:
        cond(
            "Accepted",
            False,
            "NoArtifactStore",
            "spec.artifacts.uri: required (the operator has no default)",
        )
        return finish(Phase.FAILED, [], "spec.artifacts.uri is not set")
    if observed.input_error is not None:
        where, message = observed.input_error
        cond("Accepted", False, "InvalidInput", f"{where}: {message}")
        cond("Degraded", True, "InvalidInput", f"{where}: {message}")
        return finish(
            Phase.FAILED, observed.status.targets if observed.status else [], f"{where}: {message}"
        )
    if observed.storage_error is not None or observed.fingerprint is None:
        # Storage that cannot be reached is retried, not treated as a failure of the model.
        cond(
            "Degraded", True, "StorageUnavailable", observed.storage_error or "fingerprint unknown"
        )
        out.requeue_after = config.requeue_seconds
        phase = observed.status.phase if observed.status else Phase.PENDING
        return finish(
            phase, observed.status.targets if observed.status else [], observed.storage_error
        )

    cond("Accepted", True, "Accepted", "spec accepted; source and calibration found")
    uri = artifacts_uri(model, config) or ""
    secret = model.spec.artifacts.credentials_secret or config.credentials_secret
    fp16 = wants_fp16(model, observed.gpu_types)
    ekey, tkeys = request_keys(observed, config)
    intents, missing = desired_targets(model.spec.targets, observed.gpu_types, _previous(observed))
    problems: list[str] = [
        f"spec.targets.gpuTypes[{model.spec.targets.gpu_types.index(m)}]: no node has "
        f"{config.gpu_label}={m}"
        for m in missing
    ]

    # 1. Export, once per model digest (its request key).
    if not observed.export_done:
        request = render.build_request(model, uri, ekey, fp16)
        out.apply += [
            render.request_configmap(model, request),
            render.builder_job(config, model, request, "export", None, secret),
        ]
        job = observed.jobs.get(names.export_job(model.metadata.name, ekey))
        if job is not None and job.failed:
            cond("Exported", False, "ExportFailed", job.message)
            cond("Degraded", True, "ExportFailed", job.message)
            return finish(Phase.FAILED, [], f"export failed: {job.message}")
        cond("Exported", False, "Exporting", "the export Job is running")
        _degraded(cond, problems)
        out.requeue_after = config.requeue_seconds
        return finish(Phase.EXPORTING, [])
    cond("Exported", True, "Exported", "ONNX and Q/DQ models are in the artifact store")

    # 2. One build Job per target without a stored result; 3. a server per selected engine.
    targets: list[TargetStatus] = []
    pending = 0
    previous = {t.name: t for t in (observed.status.targets if observed.status else [])}
    for intent in intents:
        deploy = names.server(model.metadata.name, intent.name)
        if intent.stale:
            before = previous.get(intent.name)
            if before is not None:
                targets.append(before.model_copy(update={"stale": True, "ready_replicas": 0}))
            if deploy in observed.deployments:
                out.scale_to_zero.append(deploy)
            problems.append(
                f"target {intent.name}: no node of this GPU type is left; scaled to zero"
            )
            continue
        key = tkeys[intent.name]
        job_name = names.build_job(model.metadata.name, intent.name, key)
        result = observed.results.get(key)
        if result is None:
            job = observed.jobs.get(job_name)
            if job is not None and job.failed:
                targets.append(
                    TargetStatus(
                        name=intent.name,
                        device=intent.device,
                        state=State.FAILED,
                        reason=f"builder Job {job_name} failed: {job.message}",
                        job=job_name,
                    )
                )
                problems.append(f"target {intent.name}: builder Job failed")
                continue
            request = render.build_request(model, uri, key, fp16)
            out.apply += [
                render.request_configmap(model, request),
                render.builder_job(config, model, request, "target", intent, secret),
            ]
            pending += 1
            targets.append(
                TargetStatus(
                    name=intent.name,
                    device=intent.device,
                    state=State.SKIPPED,
                    reason="building",
                    job=job_name,
                )
            )
            continue
        result = _reselect(result, model)
        state = observed.deployments.get(deploy)
        extra: dict[str, Any] = {"job": job_name}
        if result.selected and result.state is State.OK:
            out.apply += [
                render.server_deployment(config, model, intent, result, secret),
                render.server_service(model, intent),
            ]
            extra.update(
                deployment=deploy,
                endpoint=render.endpoint(model, intent),
                ready_replicas=state.ready_replicas if state else 0,
            )
        elif state is not None:
            # The new result has nothing to serve: the previous good engine keeps serving.
            extra.update(
                deployment=deploy,
                ready_replicas=state.ready_replicas,
                endpoint=render.endpoint(model, intent),
            )
        if result.state is State.FAILED:
            problems.append(f"target {intent.name}: {result.reason}")
        targets.append(result.model_copy(update=extra))

    built = [t for t in targets if not t.stale and t.reason != "building" and t.job is not None]
    live = [t for t in targets if not t.stale]
    if pending:
        cond("Built", False, "Building", f"{pending} of {len(live)} target(s) building")
        out.requeue_after = config.requeue_seconds
    else:
        cond("Built", True, "Built", f"{len(built)} target(s) built")
    measured = [t for t in built if t.state is State.OK]
    if built and not pending:
        cond(
            "Benchmarked",
            bool(measured),
            "Benchmarked" if measured else "NothingMeasured",
            f"{len(measured)} target(s) measured against their PyTorch baseline",
        )
    else:
        cond("Benchmarked", False, "Building", "waiting for builder Jobs")
    ready = [
        t
        for t in live
        if t.selected and (t.ready_replicas or 0) > 0 and _serving(observed, model, t)
    ]
    selected = [t for t in live if t.selected]
    if ready:
        cond("Ready", True, "Serving", ", ".join(f"{t.selected}@{t.name}" for t in ready))
    elif selected:
        cond("Ready", False, "RollingOut", "waiting for inference pods to become ready")
        out.requeue_after = config.requeue_seconds
    else:
        cond(
            "Ready",
            False,
            "Building" if pending else "NoImprovement",
            "no target has a selected engine yet" if pending else summary_of(live),
        )
    _degraded(cond, problems)
    if ready or (selected and not pending):
        phase = Phase.READY if ready else Phase.BUILDING
    elif pending:
        phase = Phase.BUILDING
    elif any(t.state is State.FAILED for t in live) and not selected:
        phase = Phase.FAILED
    else:
        phase = Phase.NO_IMPROVEMENT
    return finish(phase, targets)


def resource_status(
    previous: OptimizedModelStatus | None,
    phase: Phase,
    generation: int | None,
    targets: list[TargetStatus],
    conditions: list[Condition],
    message: str | None = None,
    summary: str | None = None,
) -> OptimizedModelStatus:
    """The whole status: the headline columns and the one-line summary follow the targets."""
    return OptimizedModelStatus(
        phase=phase,
        observed_generation=generation,
        message=message,
        targets=targets,
        conditions=conditions,
        model_digest=previous.model_digest if previous else None,
        summary=summary or (summary_of(targets) if targets else message),
        **headline(targets),
    )


def transition_events(
    before: list[Condition], after: list[Condition]
) -> list[tuple[str, str, str]]:
    """A Kubernetes Event per condition that flipped: Warning for the bad direction."""
    events = []
    for c in flips(before, after):
        kind = "Normal" if (c.status == "True") != (c.type == "Degraded") else "Warning"
        events.append((kind, c.reason, f"{c.type}={c.status}: {c.message}"))
    return events


def parse_status(status: dict[str, Any] | None) -> OptimizedModelStatus | None:
    return OptimizedModelStatus.model_validate(status) if status and status.get("phase") else None


def rejected(status: dict[str, Any] | None, generation: int | None, message: str, now: str) -> Plan:
    """A spec the CRD schema let through but Kiln's own rules refuse (cross-field checks):
    nothing is built or rolled out, and the message names the field."""
    current = parse_status(status)
    old = current.conditions if current else []
    conds = set_condition(old, "Accepted", False, "InvalidSpec", message, generation, now)
    conds = set_condition(conds, "Degraded", True, "InvalidSpec", message, generation, now)
    targets = current.targets if current else []
    failed = resource_status(current, Phase.FAILED, generation, targets, conds, message, message)
    return Plan(status=failed, events=transition_events(old, conds))


def with_apply_error(
    decided: Plan, before: OptimizedModelStatus | None, message: str, now: str
) -> Plan:
    """The plan's status, Degraded with the reason the API server refused a write (RBAC,
    quota, admission): the user sees it on the resource, the operator retries with backoff."""
    assert decided.status is not None
    gen = decided.status.observed_generation
    conds = set_condition(
        decided.status.conditions, "Degraded", True, "ApplyFailed", message, gen, now
    )
    status = decided.status.model_copy(update={"conditions": conds})
    old = before.conditions if before else []
    return Plan(status=status, events=transition_events(old, conds))


def _serving(observed: Observed, model: OptimizedModel, target: TargetStatus) -> bool:
    state = observed.deployments.get(names.server(model.metadata.name, target.name))
    return state is not None and state.engine_key == target.cache_key


def _reselect(result: TargetStatus, model: OptimizedModel) -> TargetStatus:
    """Selection is not part of the build: apply the current spec's selection rules to the
    stored measurements (a changed minSpeedup re-decides without a new Job)."""
    if result.state is not State.OK:
        return result
    chosen, why = select(result.candidates, result.baseline, model.spec.selection)
    return result.model_copy(update={"selected": chosen, "selection_reason": why})


def _degraded(cond: Any, problems: list[str]) -> None:
    if problems:
        cond("Degraded", True, "Problems", "; ".join(problems))
    else:
        cond("Degraded", False, "AsExpected", "no problems")
