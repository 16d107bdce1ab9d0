from __future__ import annotations

from typing import Any

from kiln.api.spec import OptimizedModelSpec, Targets
from kiln.builder.candidates import plan_candidates
from kiln.builder.environment import Capabilities, TargetPlan, plan_targets
from kiln.runtime.devices import gpu_product_label
from tests.fixtures.specs import spec_of

NO_GPU = Capabilities(
    cuda_device=None,
    cuda_reason="no CUDA device",
    ort_providers=["CPUExecutionProvider"],
    tensorrt=None,
    tensorrt_reason="tensorrt is not installed",
    openvino="2026.4.1",
    nncf="3.4.0",
    cpu_bf16="AVX512-BF16",
)
H100 = Capabilities(
    cuda_device="NVIDIA-H100-80GB-HBM3",
    cuda_reason="",
    ort_providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
    tensorrt="10.9",
    cuda_capability=(9, 0),
)


def spec(**over: Any) -> OptimizedModelSpec:
    body: dict[str, Any] = {
        "source": {"uri": "m.pt2"},
        "inputs": [{"name": "x", "shape": [-1, 3]}],
        "outputs": ["y"],
        "calibration": {"uri": "cal"},
    }
    return spec_of({**body, **over})


def test_gpu_label_matches_feature_discovery() -> None:
    assert gpu_product_label("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"


def test_targets_without_gpu_list_a_skipped_cuda_target() -> None:
    plans = plan_targets(Targets(), NO_GPU)
    assert plans == [TargetPlan("cpu", "cpu"), TargetPlan("cuda", "cuda", "no CUDA device")]
    named = plan_targets(Targets(cpu=False, gpu_types=["NVIDIA-L4"]), H100)
    assert named == [
        TargetPlan(
            "NVIDIA-L4", "cuda", "GPU type NVIDIA-L4 is not on this machine (NVIDIA-H100-80GB-HBM3)"
        )
    ]
    assert plan_targets(Targets(cpu=False), H100) == [TargetPlan("NVIDIA-H100-80GB-HBM3", "cuda")]


def test_cpu_candidates_and_baseline() -> None:
    plans = plan_candidates(spec(), TargetPlan("cpu", "cpu"), NO_GPU)
    # torch-compile is opt-in (AOTInductor is its deployable form); not in the defaults.
    assert [p.name for p in plans] == [
        "pytorch-cpu-fp32",
        "aotinductor-cpu-fp32",
        "aotinductor-cpu-bf16",
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
        "openvino-cpu-fp32",
        "openvino-cpu-bf16",
        "openvino-cpu-int8",
    ]
    assert all(p.skip is None for p in plans)
    every = spec(backends=["pytorch", "torch-compile", "aotinductor", "onnxruntime"])
    assert "torch-compile-cpu-fp32" in [p.name for p in plan_candidates(every, CPU, NO_GPU)]


CPU = TargetPlan("cpu", "cpu")


def test_aotinductor_needs_an_exported_program_and_a_compiler() -> None:
    def skip(over: dict[str, Any], caps: Capabilities = NO_GPU) -> str | None:
        plans = {p.name: p.skip for p in plan_candidates(spec(**over), CPU, caps)}
        return plans["aotinductor-cpu-fp32"]

    assert skip({}) is None
    assert skip({"source": {"uri": "m.pt", "format": "factory", "factory": "mod:make"}}) is None
    assert "TorchScript archive cannot be exported" in (
        skip({"source": {"uri": "m.ts", "format": "torchscript"}}) or ""
    )
    assert "no PyTorch module" in (skip({"source": {"uri": "m.onnx"}}) or "")
    no_compiler = Capabilities(**{**NO_GPU.__dict__, "cpp_compiler": False})
    assert "needs a C++ compiler" in (skip({}, no_compiler) or "")


def test_openvino_candidates_say_which_package_is_missing() -> None:
    def skips(caps: Capabilities) -> dict[str, str | None]:
        plans = plan_candidates(spec(backends=["openvino"]), CPU, caps)
        return {p.name: p.skip for p in plans if p.backend.value == "openvino"}

    no_nncf = Capabilities(**{**NO_GPU.__dict__, "nncf": None})
    assert skips(no_nncf)["openvino-cpu-fp32"] is None  # FP32 needs only the runtime
    assert "NNCF, which is not installed" in (skips(no_nncf)["openvino-cpu-int8"] or "")
    reason = "openvino is not installed (ImportError); install kiln[cpu]"
    none = Capabilities(**{**NO_GPU.__dict__, "openvino": None, "openvino_reason": reason})
    assert set(skips(none).values()) == {reason}
    assert len(skips(none)) == 3  # fp32, bf16, int8
    # Its GPU plugin is for Intel GPUs: a CUDA target has no OpenVINO candidates.
    gpu = plan_candidates(spec(), TargetPlan("NVIDIA-H100-80GB-HBM3", "cuda"), H100)
    assert not [p for p in gpu if p.backend.value == "openvino"]


def test_bf16_needs_hardware_that_computes_it() -> None:
    def skips(target: TargetPlan, caps: Capabilities) -> dict[str, str | None]:
        plans = plan_candidates(spec(precisions=["bf16"]), target, caps)
        return {p.name: p.skip for p in plans if p.precision.value == "bf16"}

    assert skips(CPU, NO_GPU) == {"aotinductor-cpu-bf16": None, "openvino-cpu-bf16": None}
    old_cpu = Capabilities(**{**NO_GPU.__dict__, "cpu_bf16": None})
    for reason in skips(CPU, old_cpu).values():
        assert "neither AVX512-BF16 nor AMX-BF16" in (reason or "")
    t4 = Capabilities(**{**H100.__dict__, "cuda_device": "Tesla-T4", "cuda_capability": (7, 5)})
    on_t4 = skips(TargetPlan("Tesla-T4", "cuda"), t4)
    assert "compute capability 7.5) has no native bf16" in (on_t4["aotinductor-cuda-bf16"] or "")
    assert "needs a bf16 ONNX model" in (on_t4["tensorrt-cuda-bf16"] or "")


def test_gpu_candidates_are_skipped_with_reasons_without_gpu_packages() -> None:
    no_trt = Capabilities(
        **{
            **H100.__dict__,
            "tensorrt": None,
            "tensorrt_reason": "tensorrt is not installed",
            "ort_providers": ["CPUExecutionProvider"],
        }
    )
    plans = {
        p.name: p.skip
        for p in plan_candidates(spec(), TargetPlan("NVIDIA-H100-80GB-HBM3", "cuda"), no_trt)
    }
    assert plans["pytorch-cuda-fp32"] is None
    assert plans["tensorrt-cuda-int8"] == "tensorrt is not installed"
    assert "no CUDAExecutionProvider" in (plans["onnxruntime-cuda-fp16"] or "")
    assert plans["aotinductor-cuda-fp32"] is None
    assert plans["aotinductor-cuda-fp16"] is None  # PyTorch ships everything it needs
    full = plan_candidates(spec(), TargetPlan("NVIDIA-H100-80GB-HBM3", "cuda"), H100)
    assert len(full) == 10
    skipped = {p.name for p in full if p.skip is not None}
    # bf16 from ONNX needs a bf16 ONNX model, which Kiln does not build.
    assert skipped == {"onnxruntime-cuda-bf16", "tensorrt-cuda-bf16"}


def test_spec_filters_backends_and_precisions_but_keeps_the_baseline() -> None:
    plans = plan_candidates(
        spec(backends=["onnxruntime"], precisions=["int8"]), TargetPlan("cpu", "cpu"), NO_GPU
    )
    assert [p.name for p in plans] == ["pytorch-cpu-fp32", "onnxruntime-cpu-int8"]


def test_onnx_source_uses_onnxruntime_as_baseline() -> None:
    plans = plan_candidates(spec(source={"uri": "m.onnx"}), TargetPlan("cpu", "cpu"), NO_GPU)
    skipped = {p.name: p.skip for p in plans}
    assert "there is no PyTorch module" in (skipped["aotinductor-cpu-fp32"] or "")
    assert skipped["onnxruntime-cpu-fp32"] is None


def test_torch_compile_on_a_torchscript_archive_is_not_applicable() -> None:
    ts = spec(source={"uri": "m.ts", "format": "torchscript"}, backends=["torch-compile"])
    skipped = {p.name: p.skip for p in plan_candidates(ts, CPU, NO_GPU)}
    assert "a TorchScript archive is not one" in (skipped["torch-compile-cpu-fp32"] or "")
    assert skipped["pytorch-cpu-fp32"] is None


def test_torch_compile_compiles_while_it_is_built() -> None:
    from types import SimpleNamespace

    import numpy as np
    import torch
    from torch._dynamo.utils import counters

    from kiln.api.spec import Backend, Precision
    from kiln.builder.candidates import CandidatePlan
    from kiln.builder.engines import _torch_runner
    from kiln.builder.torch_source import TorchModel
    from kiln.runtime.binding import Call

    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    prepared: Any = SimpleNamespace(
        model=TorchModel(torch.nn.Linear(3, 2), Call(("x",))),
        samples=[{"x": np.zeros((1, 3), np.float32)}],
    )
    plan = CandidatePlan(Backend.TORCH_COMPILE, Precision.FP32, "cpu")
    _torch_runner(plan, prepared, "cpu")
    assert counters["stats"]["unique_graphs"] > before  # compiled during the build step
