"""`runtime_speedup.py --peers`: Kiln's selected CPU engine against OpenVINO built the way
OpenVINO's own docs build it, outside Kiln, measured side by side in interleaved rounds in one
process, plus each engine's share of this CPU's measured peak.

The peers get every advantage a user tuning OpenVINO by hand would give them: the model
converted straight from the PyTorch source, static shapes at the measured batch size, NNCF's
default post-training quantization on the same calibration samples, OpenVINO's default
inference precision (bf16 on a CPU that has it), and both performance hints (LATENCY: one
request; THROUGHPUT: OpenVINO's streams, fed by an `AsyncInferQueue` of its optimal size). Each
runs on the same thread count as Kiln's engine.

Peak: a GEMM loop (2048 x 2048, torch.matmul in fp32 and bf16, torch._int_mm in int8) on the
same threads; FLOPs per sample from torch's flop counter (multiply-adds count 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kiln.api.spec import Precision, SourceFormat
from kiln.api.status import TargetStatus
from kiln.builder.benchmark import measure_rounds
from kiln.builder.calibration import fetch_calibration, iter_samples
from kiln.builder.context import BuildContext
from kiln.builder.feeds import random_feeds
from kiln.builder.fetch import fetch_source
from kiln.builder.stats import MedianInterval, mean, median_interval
from kiln.builder.torch_source import load_torch_module
from kiln.runtime.base import Array, Feeds
from kiln.serve.loading import Served, fetch_artifact, open_runner
from kiln.storage.objects import Storage

GEMM_SIZE = 2048


@dataclass
class Engine:
    name: str
    runner: Any
    samples_per_run: int
    kind: str  # which peak it is held to: fp32, bf16 or int8


class LatencyRequest:
    """One synchronous request on a compiled model (OpenVINO's LATENCY recipe)."""

    def __init__(self, name: str, compiled: Any) -> None:
        self.name, self.device = name, "cpu"
        self.request = compiled.create_infer_request()

    def prepare(self, feeds: Feeds) -> None:
        self.feeds = dict(feeds)

    def run(self) -> None:
        self.request.infer(self.feeds)

    def outputs(self) -> list[Array]:
        return [np.array(t.data) for t in self.request.output_tensors]

    def close(self) -> None:
        pass


class ThroughputQueue:
    """OpenVINO's THROUGHPUT recipe: as many requests in flight as it says is optimal; one
    run is one batch on every request, so it processes `requests` batches."""

    def __init__(self, name: str, compiled: Any) -> None:
        import openvino as ov

        self.name, self.device = name, "cpu"
        self.requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(compiled, self.requests)

    def prepare(self, feeds: Feeds) -> None:
        self.feeds = dict(feeds)

    def run(self) -> None:
        for _ in range(self.requests):
            self.queue.start_async(self.feeds)
        self.queue.wait_all()

    def outputs(self) -> list[Array]:
        return []

    def close(self) -> None:
        pass


def openvino_models(ctx: BuildContext) -> dict[str, tuple[Any, str]]:
    """OpenVINO's own conversion of the source (as it is, and quantized by NNCF's defaults on
    the calibration samples), by label, each with the peak it is held to."""
    import nncf
    import openvino as ov

    spec = ctx.spec
    path = fetch_source(ctx).path
    if spec.source.resolved_format() is SourceFormat.EXPORTED:
        converted = ov.convert_model(torch.export.load(str(path)))
    else:
        module = load_torch_module(spec, path, ctx.base_dir)
        example = random_feeds(spec.inputs, 2, seed=0)
        args = tuple(torch.from_numpy(example[t.name]) for t in spec.inputs)
        converted = ov.convert_model(module, example_input=args)
    for port, tensor in zip(converted.inputs, spec.inputs, strict=True):
        port.get_tensor().set_names({tensor.name})
    calibration = fetch_calibration(ctx)
    count = spec.calibration.samples if spec.calibration else 0
    samples = list(iter_samples(calibration, spec, count))
    quantized = nncf.quantize(converted, nncf.Dataset(samples), subset_size=len(samples))
    default = str(ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    return {
        "default": (converted, "bf16" if "bf" in default else "fp32"),
        "int8": (quantized, "int8"),
    }


def openvino_peers(
    models: dict[str, tuple[Any, str]], spec: Any, batch: int, threads: int
) -> list[Engine]:
    """Each model at the static shape of `batch`, compiled with each performance hint."""
    import openvino as ov

    shapes = {
        t.name: list(random_feeds(spec.inputs, batch, seed=0)[t.name].shape) for t in spec.inputs
    }
    core = ov.Core()
    engines = []
    for label, (model, kind) in models.items():
        static = model.clone()
        static.reshape(shapes)
        for hint, make in (("LATENCY", LatencyRequest), ("THROUGHPUT", ThroughputQueue)):
            config = {"PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads}
            runner = make(
                f"openvino-own-{label}-{hint.lower()}", core.compile_model(static, "CPU", config)
            )
            engines.append(
                Engine(runner.name, runner, batch * getattr(runner, "requests", 1), kind)
            )
    return engines


def kiln_engine(ctx: BuildContext, target: TargetStatus, batch: int, threads: int) -> Engine | None:
    """The engine `kiln serve` would load for this target, opened the way it opens it; None
    where nothing servable was selected."""
    candidate = target.candidate(target.selected or "")
    if candidate is None or candidate.artifact is None:
        return None
    artifact = fetch_artifact(Storage(), candidate.artifact, ctx.cache_dir / "peers")
    runner = open_runner(Served(ctx.model, target, candidate), artifact, threads)
    kinds = {Precision.INT8: "int8", Precision.BF16: "bf16"}
    return Engine(f"kiln {candidate.name}", runner, batch, kinds.get(candidate.precision, "fp32"))


def throughputs(engine: Engine, windows: list[list[float]]) -> list[float]:
    return [engine.samples_per_run / mean(w) for w in windows if mean(w) > 0]


def ratio_interval(ours: list[float], theirs: list[float]) -> MedianInterval:
    """Per round: our throughput over theirs in that round."""
    return median_interval([a / b for a, b in zip(ours, theirs, strict=False)])


def gemm_peaks(threads: int, rounds: int = 5) -> dict[str, float]:
    """GFLOP/s (GOP/s for int8) of the best of `rounds` timed GEMMs per data type."""
    torch.set_num_threads(threads)
    n = GEMM_SIZE
    a = torch.randn(n, n)
    cases: dict[str, Any] = {
        "fp32": lambda: torch.matmul(a, a),
        "bf16": (lambda b: lambda: torch.matmul(b, b))(a.to(torch.bfloat16)),
        "int8": (lambda q: lambda: torch._int_mm(q, q))(
            torch.randint(-128, 127, (n, n), dtype=torch.int8)
        ),
    }
    peaks = {}
    for kind, gemm in cases.items():
        gemm()
        best = min(_timed(gemm) for _ in range(rounds))
        peaks[kind] = 2 * n**3 / best / 1e9
    return peaks


def _timed(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def flops_per_sample(ctx: BuildContext) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    spec = ctx.spec
    module = load_torch_module(spec, fetch_source(ctx).path, ctx.base_dir)
    feeds = random_feeds(spec.inputs, 1, seed=0)
    args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(*args)
    return float(counter.get_total_flops())


def compare_with_peers(
    ctx: BuildContext, target: TargetStatus, batch_sizes: list[int], threads: int
) -> None:
    """Print Kiln's selected engine against every peer, per batch size, with intervals."""
    flops = flops_per_sample(ctx)
    peaks = gemm_peaks(threads)
    print(
        f"\nPeers on {threads} threads; peaks (GEMM {GEMM_SIZE}): "
        + ", ".join(f"{k} {v:.0f} G/s" for k, v in peaks.items())
        + f"; {flops / 1e6:.0f} MFLOP per sample"
    )
    models = openvino_models(ctx)
    for batch in batch_sizes:
        ours = kiln_engine(ctx, target, batch, threads)
        if ours is None:
            print(f"\nbatch {batch}: Kiln selected nothing servable ({target.selection_reason})")
            return
        engines = [ours, *openvino_peers(models, ctx.spec, batch, threads)]
        feeds = random_feeds(ctx.spec.inputs, batch, seed=0)
        for engine in engines:
            engine.runner.prepare(feeds)
        rounds = measure_rounds({e.name: e.runner for e in engines}, ours.name, ctx.spec.benchmark)
        ours_tp = throughputs(ours, rounds.timings[ours.name].windows)
        print(f"\nbatch {batch} (CPU pressure {rounds.pressure_percent or 0:.0f} %):")
        print(f"  {'engine':<36} {'samples/s':>9} {'Kiln / it':>18} {'share of peak':>14}")
        for engine in engines:
            tp = throughputs(engine, rounds.timings[engine.name].windows)
            if not tp:
                print(f"  {engine.name:<36} failed: {rounds.timings[engine.name].failure}")
                continue
            iv = ratio_interval(ours_tp, tp)
            share = 100 * median_interval(tp).median * flops / 1e9 / peaks[engine.kind]
            print(
                f"  {engine.name:<36} {median_interval(tp).median:>9.1f} "
                f"{iv.median:>6.2f}x [{iv.low:.2f}-{iv.high:.2f}] "
                f"{share:>8.0f} % {engine.kind}"
            )
