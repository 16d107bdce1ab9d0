"""The build half of the flow, once per target (CPU or a GPU type): build every candidate,
check its accuracy, benchmark all of them side by side against the baseline in this one run,
select, and publish result.json under the target's cache key."""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kiln.api.keys import cache_key
from kiln.api.layout import MODEL_DOCUMENT, RESULT_FILE
from kiln.api.select import select
from kiln.api.spec import Backend, Precision
from kiln.api.status import (
    BatchBenchmark,
    CandidateStatus,
    Environment,
    State,
    TargetStatus,
)
from kiln.builder.benchmark import measure
from kiln.builder.candidates import CandidatePlan, baseline_of, plan_candidates
from kiln.builder.context import BuildContext
from kiln.builder.environment import Capabilities, TargetPlan, environment
from kiln.builder.feeds import stack
from kiln.builder.prepare import ModelArtifact, Prepared
from kiln.builder.verify import compare
from kiln.runtime.base import Runner, infer
from kiln.runtime.ort_runner import OrtRunner
from kiln.runtime.torch_runner import TorchRunner

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"


@dataclass
class Built:
    plan: CandidatePlan
    status: dict[str, Any]
    runner: Runner | None = None


def _model_for(plan: CandidatePlan, prepared: Prepared) -> tuple[ModelArtifact | None, str]:
    """The ONNX model a candidate is built from, or the reason there is none."""
    if plan.precision is Precision.INT8:
        return prepared.qdq, prepared.qdq_error or "no Q/DQ model (calibration missing)"
    if plan.precision is Precision.FP16:
        return prepared.fp16, prepared.fp16_error or "no FP16 model"
    return prepared.onnx, ""


def candidate_key(plan: CandidatePlan, prepared: Prepared, env: Environment) -> str:
    model, _ = _model_for(plan, prepared)
    return cache_key(
        "cand",
        name=plan.name,
        model=model.key
        if model and plan.backend in (Backend.ONNXRUNTIME, Backend.TENSORRT)
        else None,
        source=prepared.source.digest,
        device=env.device_type,
        torch=env.torch,
        onnxruntime=env.onnxruntime,
        tensorrt=env.tensorrt,
        cuda=env.cuda,
    )


def build_target(
    ctx: BuildContext, prepared: Prepared, target: TargetPlan, caps: Capabilities
) -> TargetStatus:
    spec = ctx.spec
    threads = spec.benchmark.threads
    env = environment(target, caps, threads)
    plans = plan_candidates(spec, target, caps)
    baseline = baseline_of(spec, target.device).name
    keys = {p.name: candidate_key(p, prepared, env) for p in plans}
    key = cache_key(
        "result",
        target=target.name,
        environment=env.to_wire(),
        candidates=sorted((p.name, keys[p.name], p.skip) for p in plans),
        calibration=prepared.calibration.digest if prepared.calibration else None,
        batchSizes=spec.batch_sizes,
        decisionBatch=spec.decision_batch_size(),
        accuracy=spec.accuracy.to_wire(),
        benchmark=spec.benchmark.to_wire(),
    )
    result_uri = ctx.artifacts.location(key, RESULT_FILE).uri

    if target.skip:
        return TargetStatus(
            name=target.name,
            device=target.device,
            state=State.SKIPPED,
            reason=target.skip,
            baseline=baseline,
            environment=env,
            candidates=[_skipped(p, target.skip, keys[p.name]) for p in plans],
        )

    if not ctx.force and ctx.artifacts.manifest(key) is not None:
        ctx.reporter.log(
            f"[{target.name}] unchanged inputs: reusing the stored result {result_uri}"
        )
        stored = TargetStatus.model_validate(ctx.artifacts.read_json(key, RESULT_FILE))
        return _with_selection(stored.model_copy(update={"cached": True}), ctx)

    if threads:
        torch.set_num_threads(threads)
    built = [_build(ctx, p, prepared, target, keys[p.name]) for p in plans]
    _verify(ctx, built, prepared, target)
    _benchmark(ctx, built, prepared, target, baseline)
    for b in built:
        if b.runner is not None:
            b.runner.close()

    decision = spec.decision_batch_size()
    candidates = [_finish(b, decision) for b in built]
    status = TargetStatus(
        name=target.name,
        device=target.device,
        state=State.OK,
        baseline=baseline,
        cache_key=key,
        result=result_uri,
        environment=env,
        candidates=candidates,
    )
    status = _with_selection(status, ctx)
    ctx.artifacts.publish(
        key,
        {},
        {"stage": "result", "target": target.name},
        # The model document travels with the result: a server reads its I/O signature there.
        documents={RESULT_FILE: status.to_wire(), MODEL_DOCUMENT: ctx.model.to_wire()},
    )
    return status


def _with_selection(status: TargetStatus, ctx: BuildContext) -> TargetStatus:
    # Selection is not part of the result's key: changing the objective or minSpeedup
    # re-decides from the stored measurements instead of measuring again.
    if status.state is not State.OK:
        return status
    selected, reason = select(status.candidates, status.baseline, ctx.spec.selection)
    return status.model_copy(update={"selected": selected, "selection_reason": reason})


def _skipped(plan: CandidatePlan, reason: str, key: str) -> CandidateStatus:
    return CandidateStatus(
        name=plan.name,
        backend=plan.backend,
        precision=plan.precision,
        device=plan.device,
        state=State.SKIPPED,
        reason=reason,
        cache_key=key,
    )


def _base(plan: CandidatePlan, key: str) -> dict[str, Any]:
    return {
        "name": plan.name,
        "backend": plan.backend,
        "precision": plan.precision,
        "device": plan.device,
        "state": State.OK,
        "cache_key": key,
    }


def _fail(b: Built, reason: str) -> None:
    b.status.update(state=State.FAILED, reason=reason)
    if b.runner is not None:
        b.runner.close()
    b.runner = None


def _error_text(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return f"{type(exc).__name__}: {text[:300]}"


def _build(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, target: TargetPlan, key: str
) -> Built:
    if plan.skip:
        return Built(plan, _skipped(plan, plan.skip, key).model_dump())
    b = Built(plan, _base(plan, key))
    started = time.perf_counter()
    with ctx.reporter.step(f"[{target.name}] build {plan.name}"):
        try:
            b.runner = _runner(ctx, plan, prepared, target, b)
        except Exception as exc:
            _fail(b, f"build failed: {_error_text(exc)}")
    b.status["build_seconds"] = round(time.perf_counter() - started, 3)
    return b


def _runner(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, target: TargetPlan, b: Built
) -> Runner | None:
    names = [t.name for t in ctx.spec.inputs]
    device = "cuda:0" if target.device == "cuda" else "cpu"
    if plan.backend in (Backend.PYTORCH, Backend.TORCH_COMPILE):
        module = prepared.module
        if module is None:
            raise RuntimeError("no PyTorch module (ONNX source)")
        if device != "cpu":
            module = copy.deepcopy(module).to(device)
        return TorchRunner(
            plan.name, module, names, device, compile_model=plan.backend is Backend.TORCH_COMPILE
        )
    model, missing = _model_for(plan, prepared)
    if model is None:
        _fail(b, missing)
        return None
    if plan.backend is Backend.ONNXRUNTIME:
        b.status["artifact"] = model.uri
        b.status["cached"] = model.cached
        return OrtRunner(
            plan.name, model.path, ctx.spec.outputs, device, ctx.spec.benchmark.threads
        )
    engine = _tensorrt_engine(ctx, plan, model, target, b)
    from kiln.runtime.trt_runner import TrtRunner

    return TrtRunner(plan.name, engine, ctx.spec.outputs, device)


def _tensorrt_engine(
    ctx: BuildContext, plan: CandidatePlan, model: ModelArtifact, target: TargetPlan, b: Built
) -> Path:
    """Build (or reuse) the engine in a subprocess, with the timing cache for this GPU type
    and these CUDA/TensorRT versions."""
    from kiln.runtime.trt_build import ShapeProfile, versions

    spec = ctx.spec
    ver = versions()
    engine_key = cache_key(
        "trt",
        model=model.key,
        precision=plan.precision.value,
        gpu=target.name,
        batchSizes=spec.batch_sizes,
        **ver,
    )
    b.status["artifact"] = ctx.artifacts.location(engine_key, ENGINE_FILE).uri
    if not ctx.force and ctx.artifacts.manifest(engine_key) is not None:
        b.status["cached"] = True
        return ctx.artifacts.fetch(engine_key, ENGINE_FILE)
    timing_key = cache_key("timing", gpu=target.name, **ver)
    work = ctx.work_dir / engine_key
    work.mkdir(parents=True, exist_ok=True)
    timing = work / TIMING_CACHE_FILE
    if ctx.artifacts.manifest(timing_key) is not None:
        timing.write_bytes(ctx.artifacts.fetch(timing_key, TIMING_CACHE_FILE).read_bytes())
    lo, opt, hi = spec.batch_sizes[0], spec.decision_batch_size(), spec.batch_sizes[-1]
    args = [
        sys.executable,
        "-m",
        "kiln.runtime.trt_build",
        "--onnx",
        str(model.path),
        "--engine",
        str(work / ENGINE_FILE),
        "--timing-cache",
        str(timing),
    ]
    for t in spec.inputs:
        profile = ShapeProfile(
            t.name, t.concrete_shape(lo), t.concrete_shape(opt), t.concrete_shape(hi)
        )
        args += ["--shape", profile.to_arg()]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"TensorRT build exited {proc.returncode}: {' | '.join(tail)}")
    ctx.artifacts.publish(
        engine_key,
        {ENGINE_FILE: work / ENGINE_FILE},
        {"stage": "tensorrt", "gpu": target.name, **ver},
    )
    ctx.artifacts.publish(timing_key, {TIMING_CACHE_FILE: timing}, {"stage": "timing", **ver})
    return work / ENGINE_FILE


def _verify(ctx: BuildContext, built: list[Built], prepared: Prepared, target: TargetPlan) -> None:
    live = [b for b in built if b.runner is not None]
    with ctx.reporter.step(f"[{target.name}] check accuracy", total=len(live)) as step:
        for b in live:
            assert b.runner is not None
            try:
                outputs = [infer(b.runner, s) for s in prepared.samples]
                result = compare(
                    outputs,
                    prepared.references,
                    ctx.spec.outputs,
                    ctx.spec.accuracy,
                    b.plan.precision,
                )
                b.status["accuracy"] = result
            except Exception as exc:
                _fail(b, f"inference failed: {_error_text(exc)}")
            step.advance()


def _benchmark(
    ctx: BuildContext, built: list[Built], prepared: Prepared, target: TargetPlan, baseline: str
) -> None:
    spec = ctx.spec
    live = [b for b in built if b.runner is not None]
    results: dict[str, list[BatchBenchmark]] = {b.plan.name: [] for b in live}
    with ctx.reporter.step(
        f"[{target.name}] benchmark", total=len(live) * len(spec.batch_sizes)
    ) as step:
        for batch in spec.batch_sizes:
            feeds = stack(prepared.samples, batch)
            for b in live:
                if b.runner is None:  # failed at an earlier batch size
                    step.advance()
                    continue
                try:
                    b.runner.prepare(feeds)
                    results[b.plan.name].append(measure(b.runner, batch, spec.benchmark))
                except Exception as exc:
                    _fail(b, f"benchmark failed at batch {batch}: {_error_text(exc)}")
                step.advance()
    base = {r.batch_size: r.throughput for r in results.get(baseline, [])}
    for b in live:
        b.status["benchmarks"] = [
            r.model_copy(update={"speedup": r.throughput / base[r.batch_size]})
            if r.batch_size in base
            else r
            for r in results[b.plan.name]
        ]


def _finish(b: Built, decision_batch: int) -> CandidateStatus:
    status = CandidateStatus.model_validate(b.status)
    if status.state is not State.OK:
        return status
    headline = next((r for r in status.benchmarks if r.batch_size == decision_batch), None)
    if headline is None:
        return status
    return status.model_copy(
        update={
            "batch_size": headline.batch_size,
            "latency_ms": headline.latency_ms,
            "throughput": headline.throughput,
            "speedup": headline.speedup,
        }
    )
