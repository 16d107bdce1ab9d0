"""TensorRT engines for one GPU type: the key, the stored engine, and the build in a
subprocess (a crash inside TensorRT is a FAILED candidate, not a dead builder), with the timing
cache for this GPU type and these CUDA/TensorRT versions."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kiln.api.keys import cache_key
from kiln.api.spec import OptimizedModelSpec, Precision
from kiln.builder.context import BuildContext
from kiln.builder.prepare import ModelArtifact

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"


@dataclass(frozen=True)
class Engine:
    path: Path
    uri: str
    cached: bool


def engine_key(
    model: ModelArtifact,
    precision: Precision,
    gpu: str,
    spec: OptimizedModelSpec,
    ver: dict[str, str],
) -> str:
    return cache_key(
        "trt",
        model=model.key,
        precision=precision.value,
        gpu=gpu,
        batchSizes=spec.batch_sizes,
        **ver,
    )


def build_args(spec: OptimizedModelSpec, onnx: Path, engine: Path, timing: Path) -> list[str]:
    """The trt_build command line: one shape profile per input, from the smallest batch size
    to the largest, optimised for the largest; each other dynamic axis from its min to its
    max, optimised for its opt. Not for the decision batch: the engine must not depend on
    `selection`, which re-decides from stored measurements without rebuilding."""
    from kiln.runtime.trt_build import ShapeProfile

    lo, opt, hi = spec.batch_sizes[0], spec.batch_sizes[-1], spec.batch_sizes[-1]
    dims = spec.dims()
    least = {n: d.min for n, d in dims.items()}
    most = {n: d.max for n, d in dims.items()}
    args = [sys.executable, "-m", "kiln.runtime.trt_build"]
    args += ["--onnx", str(onnx), "--engine", str(engine), "--timing-cache", str(timing)]
    for t in spec.inputs:
        shapes = (t.concrete_shape(lo, least), t.concrete_shape(opt), t.concrete_shape(hi, most))
        args += ["--shape", ShapeProfile(t.name, *shapes).to_arg()]
    return args


def tensorrt_engine(
    ctx: BuildContext, model: ModelArtifact, precision: Precision, gpu: str
) -> Engine:
    """The stored engine for this model, precision and GPU type, or a new one built and
    published together with the updated timing cache."""
    from kiln.runtime.trt_build import versions

    ver = versions()
    key = engine_key(model, precision, gpu, ctx.spec, ver)
    uri = ctx.artifacts.location(key, ENGINE_FILE).uri
    if not ctx.force and ctx.artifacts.manifest(key) is not None:
        return Engine(ctx.artifacts.fetch(key, ENGINE_FILE), uri, cached=True)
    work = ctx.work_dir / key
    work.mkdir(parents=True, exist_ok=True)
    timing_key = cache_key("timing", gpu=gpu, **ver)
    timing = work / TIMING_CACHE_FILE
    if ctx.artifacts.manifest(timing_key) is not None:
        timing.write_bytes(ctx.artifacts.fetch(timing_key, TIMING_CACHE_FILE).read_bytes())
    _run(build_args(ctx.spec, model.path, work / ENGINE_FILE, timing))
    ctx.artifacts.publish(
        key, {ENGINE_FILE: work / ENGINE_FILE}, {"stage": "tensorrt", "gpu": gpu, **ver}
    )
    ctx.artifacts.publish(timing_key, {TIMING_CACHE_FILE: timing}, {"stage": "timing", **ver})
    return Engine(work / ENGINE_FILE, uri, cached=False)


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"TensorRT build exited {proc.returncode}: {' | '.join(tail)}")
