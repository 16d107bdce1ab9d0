"""The FP16 rule, owned here so the operator (which renders the export request) and the
builder (which runs it locally or in a Job) cannot disagree: the export stage converts the
model to FP16 only when something will use it."""

from __future__ import annotations

from kiln.api.spec import Backend, OptimizedModelSpec, Precision

# The backends that build from the FP16 ONNX model.
FP16_BACKENDS = frozenset({Backend.ONNXRUNTIME, Backend.TENSORRT})


def wants_fp16(spec: OptimizedModelSpec, gpu_target: bool) -> bool:
    """True when the spec asks for FP16 from an ONNX-based backend and at least one GPU target
    will be built (FP16 candidates run on GPUs only)."""
    return (
        gpu_target
        and Precision.FP16 in spec.precisions
        and any(b in FP16_BACKENDS for b in spec.backends)
    )
