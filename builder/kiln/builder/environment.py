"""What this machine offers: devices, library versions, and the targets a spec gets here."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from kiln.api.keys import BUILDER_VERSION
from kiln.api.spec import Targets
from kiln.api.status import Environment
from kiln.runtime.cpu_isa import bf16_units, cpu_flags
from kiln.runtime.devices import local_gpu, local_gpu_capability
from kiln.runtime.threads import ThreadBudget, schedulers


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Capabilities:
    """Facts that decide which candidates can run; detected once per run."""

    cuda_device: str | None  # product label of GPU 0, or None
    cuda_reason: str  # why there is no CUDA device
    ort_providers: list[str] = field(default_factory=list)
    tensorrt: str | None = None
    tensorrt_reason: str = ""
    cpp_compiler: bool = True
    openvino: str | None = None  # the runtime's version, where it imports
    openvino_reason: str = ""
    nncf: str | None = None  # the Q/DQ model's quantizer, and OpenVINO's
    cpu_bf16: str | None = None  # the CPU's native bf16 units (AMX-BF16, AVX512-BF16)
    cuda_capability: tuple[int, int] | None = None  # GPU 0's compute capability

    @staticmethod
    def detect() -> Capabilities:
        import onnxruntime

        device = local_gpu()
        reason = "" if device else "no CUDA device (torch.cuda.is_available() is False)"
        try:
            import tensorrt

            trt_version: str | None = str(tensorrt.__version__)
            trt_reason = ""
        except Exception as exc:  # ImportError, or a stub that fails on import
            trt_version = None
            trt_reason = f"tensorrt is not installed ({type(exc).__name__}); install kiln[tensorrt]"
        openvino, openvino_reason = _openvino()
        return Capabilities(
            cuda_device=device,
            cuda_reason=reason,
            ort_providers=list(onnxruntime.get_available_providers()),
            tensorrt=trt_version,
            tensorrt_reason=trt_reason,
            cpp_compiler=shutil.which("c++") is not None or shutil.which("g++") is not None,
            openvino=openvino,
            openvino_reason=openvino_reason,
            nncf=_version("nncf"),
            cpu_bf16=bf16_units(cpu_flags()),
            cuda_capability=local_gpu_capability() if device else None,
        )


def _openvino() -> tuple[str | None, str]:
    """OpenVINO's version and "", or None and why its candidates cannot be built here."""
    try:
        import openvino  # noqa: F401
    except Exception as exc:  # ImportError, or a wheel this CPU or libc cannot load
        return None, f"openvino is not installed ({type(exc).__name__}); install kiln[cpu]"
    return _version("openvino"), ""


@dataclass(frozen=True)
class TargetPlan:
    name: str  # "cpu" or a GPU product label
    device: str  # "cpu" or "cuda"
    skip: str | None = None


def plan_targets(targets: Targets, caps: Capabilities) -> list[TargetPlan]:
    """Targets for an in-process run: the CPU, and this machine's GPU if the spec wants it.

    GPU targets that cannot run here are still listed, SKIPPED with the reason, so the report
    shows what a GPU machine would add."""
    plans: list[TargetPlan] = []
    if targets.cpu:
        plans.append(TargetPlan("cpu", "cpu"))
    wanted = targets.gpu_types
    if caps.cuda_device is None:
        for name in wanted or ["cuda"]:
            plans.append(TargetPlan(name, "cuda", caps.cuda_reason))
        return plans
    if not wanted or caps.cuda_device in wanted:
        plans.append(TargetPlan(caps.cuda_device, "cuda"))
    for name in wanted:
        if name != caps.cuda_device:
            plans.append(
                TargetPlan(
                    name, "cuda", f"GPU type {name} is not on this machine ({caps.cuda_device})"
                )
            )
    return plans


def environment(target: TargetPlan, caps: Capabilities, threads: ThreadBudget) -> Environment:
    import torch

    # A CUDA target names its GPU (or, skipped, only its type), never this machine's CPU.
    device_name = (caps.cuda_device or target.name) if target.device == "cuda" else _cpu_model()
    return Environment(
        device_type=target.name,
        device_name=device_name,
        torch=torch.__version__,
        onnx=_version("onnx"),
        onnxruntime=_version("onnxruntime") or _version("onnxruntime-gpu"),
        openvino=caps.openvino if target.device == "cpu" else None,
        nncf=caps.nncf,  # it makes the Q/DQ model every target's INT8 builds from
        tensorrt=caps.tensorrt if target.device == "cuda" else None,
        cuda=torch.version.cuda if target.device == "cuda" else None,
        cpu_threads=threads.count,
        threads_source=threads.source,
        schedulers=schedulers(os.environ) if target.device == "cpu" else None,
        builder=BUILDER_VERSION,
    )


def _cpu_model() -> str:
    try:
        with Path("/proc/cpuinfo").open(encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
