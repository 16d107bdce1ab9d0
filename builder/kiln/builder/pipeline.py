"""`kiln optimize` in-process: prepare once, then build every target, then the status block."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.api.spec import Backend, Precision
from kiln.api.status import OptimizedModelStatus, Phase, State, TargetStatus
from kiln.api.summary import headline, phase_of, summary_of
from kiln.builder.context import BuildContext
from kiln.builder.environment import Capabilities, plan_targets
from kiln.builder.prepare import prepare
from kiln.builder.stages import StageFailedError, StageResult
from kiln.builder.target import build_target


@dataclass
class Outcome:
    status: OptimizedModelStatus
    stages: list[StageResult] = field(default_factory=list)


def optimize(ctx: BuildContext, caps: Capabilities | None = None) -> Outcome:
    caps = caps or Capabilities.detect()
    spec = ctx.spec
    targets = plan_targets(spec.targets, caps)
    want_fp16 = (
        Precision.FP16 in spec.precisions
        and any(b in spec.backends for b in (Backend.ONNXRUNTIME, Backend.TENSORRT))
        and any(t.device == "cuda" and not t.skip for t in targets)
    )
    try:
        prepared = prepare(ctx, want_fp16)
    except StageFailedError as exc:
        status = OptimizedModelStatus(
            phase=Phase.FAILED,
            observed_generation=ctx.model.metadata.generation,
            message=f"{exc.result.stage} failed: {exc.result.reason}",
        )
        return Outcome(status, [exc.result])
    results: list[TargetStatus] = [build_target(ctx, prepared, t, caps) for t in targets]
    status = OptimizedModelStatus(
        phase=phase_of(results),
        observed_generation=ctx.model.metadata.generation,
        model_digest=prepared.source.digest,
        onnx_artifact=prepared.onnx.uri,
        quantized_artifact=prepared.qdq.uri if prepared.qdq else None,
        summary=summary_of(results),
        targets=results,
        **headline(results),
    )
    if status.phase is Phase.FAILED and all(t.state is State.SKIPPED for t in results):
        status = status.model_copy(update={"message": "no target can run on this machine"})
    return Outcome(status, prepared.stages)
