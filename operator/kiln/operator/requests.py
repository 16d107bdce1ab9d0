"""What a builder Job is asked to do, and the keys that name each request (pure).

A request key covers everything that changes what the Job produces, so an unchanged request is
never built twice and the operator can find its result in storage without any Job. Selection,
serving, cost and the target list are left out of the target key: changing them re-decides or
re-rolls from stored measurements, never rebuilds.
"""

from __future__ import annotations

from kiln.api.keys import cache_key
from kiln.api.spec import OptimizedModel
from kiln.operator.config import OperatorConfig


def artifacts_uri(model: OptimizedModel, config: OperatorConfig) -> str | None:
    return model.spec.artifacts.uri or config.artifacts_uri


def credentials_secret(model: OptimizedModel, config: OperatorConfig) -> str | None:
    return model.spec.artifacts.credentials_secret or config.credentials_secret


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
        # The export quantizes without the samples held out for the gates.
        held_out=spec.accuracy.held_out(),
        validation=spec.accuracy.uri,
        fingerprint=fingerprint,
        image=config.builder_image,
        fp16=fp16,
    )


def target_key(model: OptimizedModel, target: str, fingerprint: str, config: OperatorConfig) -> str:
    spec = model.spec.to_wire()
    for decided_later in ("selection", "serving", "cost", "targets"):
        spec.pop(decided_later, None)
    return cache_key(
        "req-target", spec=spec, target=target, fingerprint=fingerprint, image=config.builder_image
    )
