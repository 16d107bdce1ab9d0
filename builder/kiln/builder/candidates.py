"""Which candidates a target gets, and why any of them is skipped: a pure decision."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.api.spec import Backend, OptimizedModelSpec, Precision, SourceFormat
from kiln.builder.environment import Capabilities, TargetPlan


@dataclass(frozen=True)
class CandidatePlan:
    backend: Backend
    precision: Precision
    device: str
    skip: str | None = None

    @property
    def name(self) -> str:
        return f"{self.backend.value}-{self.device}-{self.precision.value}"


_CPU = [
    (Backend.PYTORCH, Precision.FP32),
    (Backend.TORCH_COMPILE, Precision.FP32),
    (Backend.AOTINDUCTOR, Precision.FP32),
    (Backend.AOTINDUCTOR, Precision.BF16),
    (Backend.ONNXRUNTIME, Precision.FP32),
    (Backend.ONNXRUNTIME, Precision.INT8),
    (Backend.OPENVINO, Precision.FP32),
    (Backend.OPENVINO, Precision.BF16),
    (Backend.OPENVINO, Precision.INT8),
]
# No OpenVINO: its GPU plugin is for Intel GPUs, which Kiln does not target.
_CUDA = [
    (Backend.PYTORCH, Precision.FP32),
    (Backend.TORCH_COMPILE, Precision.FP32),
    (Backend.AOTINDUCTOR, Precision.FP32),
    (Backend.AOTINDUCTOR, Precision.FP16),
    (Backend.AOTINDUCTOR, Precision.BF16),
    (Backend.ONNXRUNTIME, Precision.FP32),
    (Backend.ONNXRUNTIME, Precision.FP16),
    (Backend.ONNXRUNTIME, Precision.BF16),
    (Backend.TENSORRT, Precision.FP16),
    (Backend.TENSORRT, Precision.BF16),
    (Backend.TENSORRT, Precision.INT8),
]
# bf16 from an ONNX model needs that model in bf16, and the converter Kiln uses for FP16
# (onnxruntime.transformers.float16) has no bf16 mode; ONNX Runtime's CUDA provider lacks bf16
# kernels for most operators besides. Said per candidate, so the status shows what is missing.
_NO_BF16_ONNX = (
    "needs a bf16 ONNX model, which Kiln does not build (its FP16 model is this backend's "
    "half-precision engine; AOTInductor bf16 is the bf16 one)"
)
# NVIDIA GPUs compute bf16 natively from Ampere (compute capability 8.0) on.
_BF16_CAPABILITY = (8, 0)


def baseline_of(spec: OptimizedModelSpec, device: str) -> CandidatePlan:
    """PyTorch eager on the target's device; ONNX Runtime FP32 when the source is ONNX."""
    if spec.source.resolved_format() is SourceFormat.ONNX:
        return CandidatePlan(Backend.ONNXRUNTIME, Precision.FP32, device)
    return CandidatePlan(Backend.PYTORCH, Precision.FP32, device)


def plan_candidates(
    spec: OptimizedModelSpec, target: TargetPlan, caps: Capabilities
) -> list[CandidatePlan]:
    source = spec.source.resolved_format()
    baseline = baseline_of(spec, target.device)
    plans: list[CandidatePlan] = []
    for backend, precision in _CUDA if target.device == "cuda" else _CPU:
        plan = CandidatePlan(backend, precision, target.device)
        is_baseline = plan == baseline
        if not is_baseline and (backend not in spec.backends or precision not in spec.precisions):
            continue
        plans.append(
            CandidatePlan(backend, precision, target.device, _skip(plan, target, caps, source))
        )
    return plans


_TORCH_BACKENDS = (Backend.PYTORCH, Backend.TORCH_COMPILE, Backend.AOTINDUCTOR)


def _aoti_skip(source: SourceFormat, caps: Capabilities) -> str | None:
    if source is SourceFormat.TORCHSCRIPT:
        return (
            "AOTInductor compiles a torch.export program; a TorchScript archive cannot be "
            "exported (give the model as a .pt2 program or a factory)"
        )
    if not caps.cpp_compiler:
        # The package's host code is C++ on every device type, CUDA included.
        return "AOTInductor needs a C++ compiler to build (none on PATH)"
    return None


def _bf16_skip(plan: CandidatePlan, caps: Capabilities) -> str | None:
    if plan.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT):
        return _NO_BF16_ONNX
    if plan.device == "cpu" and caps.cpu_bf16 is None:
        return (
            "this CPU has neither AVX512-BF16 nor AMX-BF16: bf16 would be converted to and from "
            "float32 around every op, slower than FP32"
        )
    capability = caps.cuda_capability
    if plan.device == "cuda" and capability is not None and capability < _BF16_CAPABILITY:
        return (
            f"this GPU (compute capability {capability[0]}.{capability[1]}) has no native bf16; "
            "NVIDIA GPUs compute it from compute capability 8.0 (Ampere) on"
        )
    return None


def _openvino_skip(plan: CandidatePlan, caps: Capabilities) -> str | None:
    if caps.openvino is None:
        return caps.openvino_reason or "openvino is not installed; install kiln[cpu]"
    if plan.precision is Precision.INT8 and caps.nncf is None:
        return "OpenVINO INT8 is quantized by NNCF, which is not installed; install kiln[cpu]"
    return None


def _skip(
    plan: CandidatePlan, target: TargetPlan, caps: Capabilities, source: SourceFormat
) -> str | None:
    if target.skip:
        return target.skip
    onnx_source = source is SourceFormat.ONNX
    if onnx_source and plan.backend in _TORCH_BACKENDS:
        return "the source is an ONNX model: there is no PyTorch module to run"
    if plan.precision is Precision.BF16 and (why := _bf16_skip(plan, caps)):
        return why
    if plan.backend is Backend.AOTINDUCTOR:
        return _aoti_skip(source, caps)
    if plan.backend is Backend.TORCH_COMPILE and source is SourceFormat.TORCHSCRIPT:
        return "torch.compile compiles Python modules; a TorchScript archive is not one"
    if plan.backend is Backend.TORCH_COMPILE and plan.device == "cpu" and not caps.cpp_compiler:
        return "torch.compile on CPU needs a C++ compiler (none on PATH)"
    if plan.backend is Backend.OPENVINO:
        return _openvino_skip(plan, caps)
    if plan.device == "cuda":
        if (
            plan.backend is Backend.ONNXRUNTIME
            and "CUDAExecutionProvider" not in caps.ort_providers
        ):
            return (
                "onnxruntime has no CUDAExecutionProvider (providers: "
                f"{', '.join(caps.ort_providers)}); install kiln[gpu]"
            )
        if plan.backend is Backend.TENSORRT and caps.tensorrt is None:
            return caps.tensorrt_reason
    return None
