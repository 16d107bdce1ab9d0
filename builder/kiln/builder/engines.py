"""Build one candidate: the runner that the accuracy check and the benchmark use, from the
PyTorch module, an AOTInductor package, the ONNX model of its precision, or a TensorRT
engine."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

from kiln.api.spec import Backend, Precision
from kiln.builder.aoti import CandidateBuildError, aoti_package
from kiln.builder.candidates import CandidatePlan
from kiln.builder.context import BuildContext
from kiln.builder.environment import TargetPlan
from kiln.builder.prepare import ModelArtifact, Prepared
from kiln.runtime.aoti_runner import AotiRunner
from kiln.runtime.base import Runner, infer
from kiln.runtime.ort_runner import OrtRunner
from kiln.runtime.torch_runner import TorchRunner


@dataclass(frozen=True)
class Built:
    """What building one candidate gave: a runner, or the reason there is none."""

    runner: Runner | None
    seconds: float
    artifact: str | None = None  # URI of what a server would load
    cached: bool = False  # the artifact was reused from storage
    failure: str | None = None
    note: str | None = None  # how it was built, where a user should know


class ModelUnavailableError(Exception):
    """The candidate's model does not exist (quantization or FP16 conversion failed, or no
    calibration set): its reason is the whole story, not a build error."""


def model_for(plan: CandidatePlan, prepared: Prepared) -> tuple[ModelArtifact | None, str]:
    """The ONNX model a candidate is built from, or the reason there is none."""
    if plan.precision is Precision.INT8:
        return prepared.qdq, prepared.qdq_error or "no Q/DQ model (calibration missing)"
    if plan.precision is Precision.FP16:
        return prepared.fp16, prepared.fp16_error or "no FP16 model"
    return prepared.onnx, ""


def error_text(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return f"{type(exc).__name__}: {text[:300]}"


def build_candidate(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, target: TargetPlan, threads: int
) -> Built:
    """`threads`: the count every runtime of the target gets (its environment's)."""
    started = time.perf_counter()
    try:
        with ctx.reporter.step(f"[{target.name}] build {plan.name}"):
            engine = _engine(ctx, plan, prepared, target, threads)
    except ModelUnavailableError as exc:
        return Built(None, _since(started), failure=str(exc))
    except CandidateBuildError as exc:
        return Built(None, _since(started), failure=f"build failed: {exc}")
    except Exception as exc:
        return Built(None, _since(started), failure=f"build failed: {error_text(exc)}")
    return Built(engine.runner, _since(started), engine.artifact, engine.cached, note=engine.note)


@dataclass(frozen=True)
class Engine:
    runner: Runner
    artifact: str | None = None  # URI of what a server would load
    cached: bool = False
    note: str | None = None  # what an INT8 model holds, where it is not every op


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _torch_runner(plan: CandidatePlan, prepared: Prepared, device: str) -> TorchRunner:
    model = prepared.model
    if model is None:
        raise RuntimeError("no PyTorch module (ONNX source)")
    module = model.module if device == "cpu" else copy.deepcopy(model.module).to(device)
    compiled = plan.backend is Backend.TORCH_COMPILE
    runner = TorchRunner(plan.name, module, model.call, device, compile_model=compiled)
    if compiled:
        # torch.compile compiles on its first call: count that in its build time, not in
        # the accuracy check's.
        infer(runner, prepared.samples[0])
    return runner


def _engine(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, target: TargetPlan, threads: int
) -> Engine:
    device = "cuda:0" if target.device == "cuda" else "cpu"
    if plan.backend in (Backend.PYTORCH, Backend.TORCH_COMPILE):
        return Engine(_torch_runner(plan, prepared, device))
    if plan.backend is Backend.AOTINDUCTOR:
        package = aoti_package(ctx, plan, prepared, target.name, threads)
        names = [t.name for t in ctx.spec.inputs]  # a package takes them in the spec's order
        package_runner = AotiRunner(plan.name, package.path, names, device, threads)
        return Engine(package_runner, package.uri, package.cached)
    if plan.backend is Backend.OPENVINO:
        return _openvino_engine(ctx, plan, prepared, threads)
    model, missing = model_for(plan, prepared)
    if model is None:
        raise ModelUnavailableError(missing)
    outputs = ctx.spec.outputs
    note = prepared.qdq_scope if plan.precision is Precision.INT8 else None
    if plan.backend is Backend.ONNXRUNTIME:
        runner = OrtRunner(plan.name, model.path, outputs, device, threads)
        return Engine(runner, model.uri, model.cached, note)
    from kiln.builder.tensorrt import tensorrt_engine
    from kiln.runtime.trt_runner import TrtRunner

    built = tensorrt_engine(ctx, model, plan.precision, target.name)
    return Engine(TrtRunner(plan.name, built.path, outputs, device), built.uri, built.cached, note)


def _openvino_engine(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, threads: int
) -> Engine:
    from kiln.builder.openvino import openvino_ir
    from kiln.runtime.ov_runner import InferencePrecision, OpenVinoRunner

    if plan.precision is Precision.INT8 and prepared.quantizer is None:
        raise ModelUnavailableError("no calibration set: OpenVINO INT8 needs spec.calibration")
    ir = openvino_ir(ctx, plan, prepared)
    hint = InferencePrecision.of(plan.precision.value)
    runner = OpenVinoRunner(plan.name, ir.path, ctx.spec.outputs, threads, hint)
    return Engine(runner, ir.uri, ir.cached, ir.meta.get("scope"))
