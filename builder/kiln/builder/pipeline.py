"""`kiln optimize` in-process: prepare once, then build every target, then the status block."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.api.fp16 import wants_fp16
from kiln.api.phase import result_phase, results_phase
from kiln.api.status import OptimizedModelStatus, Phase, State, TargetStatus
from kiln.api.summary import resource_status
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
    generation = ctx.model.metadata.generation
    targets = plan_targets(spec.targets, caps)
    gpu_target = any(t.device == "cuda" and not t.skip for t in targets)
    try:
        prepared = prepare(ctx, wants_fp16(spec, gpu_target))
    except StageFailedError as exc:
        message = f"{exc.result.stage} failed: {exc.result.reason}"
        status = resource_status(Phase.FAILED, [], message, observed_generation=generation)
        return Outcome(status, [exc.result])
    results: list[TargetStatus] = [
        _with_phase(build_target(ctx, prepared, t, caps)) for t in targets
    ]
    phase = results_phase(results)
    nothing_ran = phase is Phase.FAILED and all(t.state is State.SKIPPED for t in results)
    status = resource_status(
        phase,
        results,
        "no target can run on this machine" if nothing_ran else None,
        observed_generation=generation,
        model_digest=prepared.source.digest,
        onnx_artifact=prepared.onnx.uri,
        quantized_artifact=prepared.qdq.uri if prepared.qdq else None,
    )
    return Outcome(status, prepared.stages)


def _with_phase(result: TargetStatus) -> TargetStatus:
    return result.model_copy(update={"phase": result_phase(result)})
