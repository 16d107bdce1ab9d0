"""observe -> **plan** -> apply. Everything here is pure: what the cluster and storage look like
in, the whole desired state (children to apply, status, events) out. Re-run on every pass: the
plan is the complete desired state, never a delta, so a missed event or a restart only delays
convergence.

The plan is a short chain: the input gates, the export step, one decision per target
(`decide`), one policy function per condition (`policies`), and the phase rule of `kiln.api`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.api.fp16 import wants_fp16
from kiln.api.phase import IN_FLIGHT, resource_phase
from kiln.api.status import (
    Condition,
    ConditionType,
    OptimizedModelStatus,
    Phase,
    Reason,
    TargetStatus,
)
from kiln.api.summary import resource_status
from kiln.operator import policies
from kiln.operator.conditions import Problem, Verdict, flips, record
from kiln.operator.config import OperatorConfig
from kiln.operator.decide import (
    ExportDecision,
    Inputs,
    JobPhase,
    Manifest,
    TargetDecision,
    decide_export,
    decide_target,
)
from kiln.operator.observed import Observed
from kiln.operator.requests import artifacts_uri, credentials_secret, export_key, target_key
from kiln.operator.targets import TargetIntent, desired_targets

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Plan:
    apply: list[Manifest] = field(default_factory=list)
    scale_to_zero: list[str] = field(default_factory=list)  # Deployments of stale targets
    status: OptimizedModelStatus | None = None
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


@dataclass(frozen=True)
class Wanted:
    """The targets this cluster gives the resource, worked out once per pass."""

    intents: list[TargetIntent]
    missing: list[str]  # spec.targets.gpuTypes entries that no node has
    fp16: bool  # the export also makes the FP16 model (kiln.api.fp16)


def wanted(observed: Observed) -> Wanted:
    previous = [t.name for t in observed.previous_targets]
    intents, missing = desired_targets(observed.model.spec.targets, observed.gpu_types, previous)
    gpu_target = any(i.device == "cuda" and not i.stale for i in intents)
    return Wanted(intents, missing, wants_fp16(observed.model.spec, gpu_target))


def request_keys(
    observed: Observed, config: OperatorConfig, targets: Wanted | None = None
) -> tuple[str, dict[str, str]]:
    """(export request key, target name -> request key) for a known fingerprint."""
    assert observed.fingerprint is not None
    model, fingerprint = observed.model, observed.fingerprint
    targets = targets or wanted(observed)
    keys = {i.name: target_key(model, i.name, fingerprint, config) for i in targets.intents}
    return export_key(model, fingerprint, config, targets.fp16), keys


def plan(observed: Observed, config: OperatorConfig) -> Plan:
    gated = _gate(observed, config)
    if gated is not None:
        return gated
    targets = wanted(observed)
    inputs = Inputs(
        model=observed.model,
        config=config,
        artifacts_uri=artifacts_uri(observed.model, config) or "",
        secret=credentials_secret(observed.model, config),
        fp16=targets.fp16,
        jobs=observed.jobs,
        deployments=observed.deployments,
    )
    ekey, tkeys = request_keys(observed, config, targets)
    problems = [_unknown_gpu_type(observed, config, m) for m in targets.missing]
    export = decide_export(inputs, ekey, observed.export_done)
    if export.phase is not JobPhase.DONE:
        return _exporting(observed, config, export, problems)
    previous = {t.name: t for t in observed.previous_targets}
    decisions = [
        decide_target(
            inputs, i, tkeys[i.name], observed.results.get(tkeys[i.name]), previous.get(i.name)
        )
        for i in targets.intents
    ]
    problems += [d.problem for d in decisions if d.problem is not None]
    verdicts = [
        policies.accepted(),
        *policies.exported(export),
        policies.built(decisions),
        policies.benchmarked(decisions),
        policies.ready(decisions),
        policies.degraded(problems),
    ]
    return _targets_plan(observed, config, decisions, verdicts)


def _targets_plan(
    observed: Observed,
    config: OperatorConfig,
    decisions: list[TargetDecision],
    verdicts: list[Verdict],
) -> Plan:
    phases = [d.phase for d in decisions]
    targets = [d.status for d in decisions if d.status is not None]
    out = _finish(observed, resource_phase(phases), targets, verdicts)
    out.apply = [m for d in decisions for m in d.apply]
    out.scale_to_zero = [d.scale_to_zero for d in decisions if d.scale_to_zero]
    if any(p in IN_FLIGHT for p in phases):
        out.requeue_after = config.requeue_seconds
    return out


def _exporting(
    observed: Observed, config: OperatorConfig, export: ExportDecision, problems: list[Problem]
) -> Plan:
    verdicts = [policies.accepted(), *policies.exported(export)]
    if export.phase is JobPhase.FAILED:
        return _finish(observed, Phase.FAILED, [], verdicts, f"export failed: {export.message}")
    out = _finish(
        observed,
        Phase.EXPORTING,
        [],
        [*verdicts, policies.degraded([*problems, *export.problems()])],
    )
    out.apply = export.apply
    out.requeue_after = config.requeue_seconds
    return out


def _unknown_gpu_type(observed: Observed, config: OperatorConfig, missing: str) -> Problem:
    index = observed.model.spec.targets.gpu_types.index(missing)
    return Problem(
        Reason.UNKNOWN_GPU_TYPE,
        f"spec.targets.gpuTypes[{index}]: no node has {config.gpu_label}={missing}",
    )


def _gate(observed: Observed, config: OperatorConfig) -> Plan | None:
    """The inputs' gates, before anything is built: a spec that cannot work, an input that
    does not exist (permanent), or storage that cannot be reached (transient, retried)."""
    previous = observed.previous_targets
    if artifacts_uri(observed.model, config) is None:
        why = "spec.artifacts.uri: required (the operator has no default)"
        verdict = Verdict(ConditionType.ACCEPTED, False, Reason.NO_ARTIFACT_STORE, why)
        return _finish(observed, Phase.FAILED, [], [verdict], "spec.artifacts.uri is not set")
    if observed.input_error is not None:
        where, message = observed.input_error
        why = f"{where}: {message}"
        verdicts = [
            Verdict(ConditionType.ACCEPTED, False, Reason.INVALID_INPUT, why),
            Verdict(ConditionType.DEGRADED, True, Reason.INVALID_INPUT, why),
        ]
        return _finish(observed, Phase.FAILED, previous, verdicts, why)
    if observed.storage_error is not None or observed.fingerprint is None:
        why = observed.storage_error or "fingerprint unknown"
        verdict = Verdict(ConditionType.DEGRADED, True, Reason.STORAGE_UNAVAILABLE, why)
        phase = observed.status.phase if observed.status else Phase.PENDING
        out = _finish(observed, phase, previous, [verdict], observed.storage_error)
        out.requeue_after = config.requeue_seconds
        return out
    return None


def _finish(
    observed: Observed,
    phase: Phase,
    targets: list[TargetStatus],
    verdicts: list[Verdict],
    message: str | None = None,
) -> Plan:
    gen = observed.model.metadata.generation
    old = observed.status.conditions if observed.status else []
    conditions = record(list(old), verdicts, gen, observed.now)
    status = resource_status(
        phase,
        targets,
        message,
        observed_generation=gen,
        conditions=conditions,
        model_digest=observed.status.model_digest if observed.status else None,
    )
    return Plan(status=status, events=transition_events(old, conditions))


def transition_events(before: list[Condition], after: list[Condition]) -> list[Event]:
    """A Kubernetes Event per condition that flipped: Warning for the bad direction."""
    events = []
    for c in flips(before, after):
        good = (c.status == "True") != (c.type == ConditionType.DEGRADED)
        events.append(
            ("Normal" if good else "Warning", c.reason, f"{c.type}={c.status}: {c.message}")
        )
    return events


def parse_status(status: dict[str, Any] | None) -> OptimizedModelStatus | None:
    return OptimizedModelStatus.model_validate(status) if status and status.get("phase") else None


def rejected(status: dict[str, Any] | None, generation: int | None, message: str, now: str) -> Plan:
    """A spec the CRD schema let through but Kiln's own rules refuse (cross-field checks):
    nothing is built or rolled out, and the message names the field."""
    current = parse_status(status)
    old = current.conditions if current else []
    verdicts = [
        Verdict(ConditionType.ACCEPTED, False, Reason.INVALID_SPEC, message),
        Verdict(ConditionType.DEGRADED, True, Reason.INVALID_SPEC, message),
    ]
    conditions = record(list(old), verdicts, generation, now)
    failed = resource_status(
        Phase.FAILED,
        current.targets if current else [],
        message,
        summary=message,
        observed_generation=generation,
        conditions=conditions,
        model_digest=current.model_digest if current else None,
    )
    return Plan(status=failed, events=transition_events(old, conditions))


def with_apply_error(
    decided: Plan, before: OptimizedModelStatus | None, message: str, now: str
) -> Plan:
    """The plan's status, Degraded with the reason the API server refused a write (RBAC,
    quota, admission): the user sees it on the resource, the operator retries with backoff."""
    assert decided.status is not None
    gen = decided.status.observed_generation
    verdict = Verdict(ConditionType.DEGRADED, True, Reason.APPLY_FAILED, message)
    conditions = record(decided.status.conditions, [verdict], gen, now)
    status = decided.status.model_copy(update={"conditions": conditions})
    old = before.conditions if before else []
    return Plan(status=status, events=transition_events(old, conditions))
