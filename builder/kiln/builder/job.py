"""What a builder Job runs: `kiln build --request FILE --stage export|target [--target NAME]`.

The operator writes the request (the OptimizedModel document, where artifacts go, and the key
of this request); the Job writes artifacts and results to object storage and a short JSON
termination message. It never talks to the Kubernetes API. Once done, the request key's folder
holds a copy of the target's result.json, so the operator can tell "already built" from storage
alone and start no Job at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.api.base import KilnModel
from kiln.api.errors import KilnInputError
from kiln.api.layout import RESULT_FILE
from kiln.api.spec import OptimizedModel, Targets
from kiln.api.status import TargetStatus
from kiln.builder.context import BuildContext
from kiln.builder.environment import Capabilities, TargetPlan, plan_targets
from kiln.builder.prepare import Prepared, prepare
from kiln.builder.target import build_target

# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LIMIT = 4096


class BuildRequest(KilnModel):
    model: OptimizedModel
    artifacts_uri: str
    request_key: str
    fp16: bool = False  # export also the FP16 model (the cluster has GPU targets)


def load_request(path: Path) -> BuildRequest:
    try:
        return BuildRequest.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KilnInputError(str(path), f"cannot read the build request: {exc.strerror}") from None
    except ValueError as exc:
        raise KilnInputError(str(path), f"not a valid build request: {exc}") from None


def job_target(name: str, caps: Capabilities) -> TargetPlan:
    """The one target this Job builds, SKIPPED with the reason if this node cannot run it."""
    if name == "cpu":
        return TargetPlan("cpu", "cpu")
    (plan,) = [
        p for p in plan_targets(Targets(cpu=False, gpu_types=[name]), caps) if p.name == name
    ]
    return plan


@dataclass
class JobOutcome:
    message: dict[str, Any]
    exit_code: int


EXPORT_FILE = "export.json"


def run_export(ctx: BuildContext, request: BuildRequest) -> JobOutcome:
    prepared = prepare(ctx, want_fp16=request.fp16)
    message = _export_message(prepared)
    # The request key's folder marks this export done for the operator.
    ctx.artifacts.publish(
        request.request_key, {}, {"stage": "export-request"}, documents={EXPORT_FILE: message}
    )
    return JobOutcome(message, 0)


def _export_message(prepared: Prepared) -> dict[str, Any]:
    return {
        "stage": "export",
        "modelDigest": prepared.source.digest,
        "onnx": prepared.onnx.uri,
        "qdq": prepared.qdq.uri if prepared.qdq else None,
        "fp16": prepared.fp16.uri if prepared.fp16 else None,
        "stages": [f"{s.stage}={s.state.value}" for s in prepared.stages],
    }


def run_target(ctx: BuildContext, request: BuildRequest, target_name: str) -> JobOutcome:
    caps = Capabilities.detect()
    plan = job_target(target_name, caps)
    prepared = prepare(ctx, want_fp16=request.fp16 and plan.device == "cuda" and not plan.skip)
    status = build_target(ctx, prepared, plan, caps)
    ctx.artifacts.publish(
        request.request_key,
        {},
        {"stage": "request", "target": target_name, "resultKey": status.cache_key},
        documents={RESULT_FILE: status.to_wire()},
    )
    # The result is recorded, whatever its state: the Job did its work. A FAILED target is a
    # measurement the operator reads from storage, not a reason for Kubernetes to retry.
    return JobOutcome(target_message(status), 0)


def target_message(status: TargetStatus) -> dict[str, Any]:
    """A compact summary for the termination message; the full result lives in storage."""
    return {
        "stage": "target",
        "target": status.name,
        "state": status.state.value,
        "reason": status.reason,
        "result": status.result,
        "resultKey": status.cache_key,
        "selected": status.selected,
        "selectionReason": status.selection_reason,
    }


def termination_text(message: dict[str, Any]) -> str:
    text = json.dumps(message, separators=(",", ":"))
    if len(text.encode()) <= TERMINATION_LIMIT:
        return text
    trimmed = {k: v for k, v in message.items() if k in ("stage", "target", "state", "resultKey")}
    return json.dumps({**trimmed, "truncated": True}, separators=(",", ":"))
