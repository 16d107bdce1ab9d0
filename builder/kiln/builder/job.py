"""What a builder Job runs: `kiln build --request FILE --stage export|target [--target NAME]`.

The operator writes the request (`kiln.api.request.BuildRequest`); the Job writes artifacts and
results to object storage and a `JobReport` (`kiln.api.report`) as its termination message. It
never talks to the Kubernetes API. Once done, the request key's folder holds a copy of the
target's result.json, so the operator can tell "already built" from storage alone and start no
Job at all.
"""

from __future__ import annotations

from kiln.api.layout import RESULT_FILE
from kiln.api.report import JobReport
from kiln.api.request import BuildRequest, Stage
from kiln.api.spec import Targets
from kiln.api.status import TargetStatus
from kiln.builder.context import BuildContext
from kiln.builder.environment import Capabilities, TargetPlan, plan_targets
from kiln.builder.prepare import Prepared, prepare
from kiln.builder.target import build_target

EXPORT_FILE = "export.json"


def job_target(name: str, caps: Capabilities) -> TargetPlan:
    """The one target this Job builds, SKIPPED with the reason if this node cannot run it."""
    if name == "cpu":
        return TargetPlan("cpu", "cpu")
    (plan,) = [
        p for p in plan_targets(Targets(cpu=False, gpu_types=[name]), caps) if p.name == name
    ]
    return plan


def run_export(ctx: BuildContext, request: BuildRequest) -> JobReport:
    # The operator applied the FP16 rule (kiln.api.fp16) to the cluster's targets.
    prepared = prepare(ctx, want_fp16=request.fp16)
    report = export_report(prepared)
    # The request key's folder marks this export done for the operator.
    ctx.artifacts.publish(
        request.request_key,
        {},
        {"stage": "export-request"},
        documents={EXPORT_FILE: report.to_wire()},
    )
    return report


def export_report(prepared: Prepared) -> JobReport:
    return JobReport(
        stage=Stage.EXPORT,
        model_digest=prepared.source.digest,
        onnx=prepared.onnx.uri,
        qdq=prepared.qdq.uri if prepared.qdq else None,
        fp16=prepared.fp16.uri if prepared.fp16 else None,
        stages=[f"{s.stage}={s.state.value}" for s in prepared.stages],
    )


def run_target(ctx: BuildContext, request: BuildRequest, target_name: str) -> JobReport:
    caps = Capabilities.detect()
    plan = job_target(target_name, caps)
    # Only a GPU target that can run here uses the FP16 model the export made.
    uses_fp16 = request.fp16 and plan.device == "cuda" and not plan.skip
    prepared = prepare(ctx, want_fp16=uses_fp16)
    status = build_target(ctx, prepared, plan, caps)
    ctx.artifacts.publish(
        request.request_key,
        {},
        {"stage": "request", "target": target_name, "resultKey": status.cache_key},
        documents={RESULT_FILE: status.to_wire()},
    )
    # The result is recorded, whatever its state: the Job did its work. A FAILED target is a
    # measurement the operator reads from storage, not a reason for Kubernetes to retry.
    return target_report(status)


def target_report(status: TargetStatus) -> JobReport:
    """A compact summary for the termination message; the full result lives in storage."""
    return JobReport(
        stage=Stage.TARGET,
        target=status.name,
        state=status.state,
        reason=status.reason,
        result=status.result,
        result_key=status.cache_key,
        selected=status.selected,
        selection_reason=status.selection_reason,
    )
