"""AOTInductor (FP32, bf16), ONNX Runtime (FP32, INT8), OpenVINO (FP32, bf16, INT8) and, on an
NVIDIA GPU, the CUDA (AOTInductor FP32, FP16 and bf16, ONNX Runtime) and TensorRT candidates
against PyTorch eager, measured side by side in
interleaved rounds in one run on this machine, with each speedup's 95 % interval, plus where
the time goes (top operators of each runtime at the largest batch size).

    .venv/bin/python benchmarks/runtime_speedup.py [SPEC] [--batch-sizes 1 8] [--seconds 20]
        [--hog N] [--torch-compile] [--artifacts STORE] [--peers]

`--torch-compile` adds torch.compile (JIT) as a reference row beside its AOT form. `--peers`
then measures the CPU engine Kiln selected against OpenVINO built by hand, outside Kiln, the
way its own docs build it, with each engine's share of the CPU's peak (benchmarks/cpu_peers.py).

It drives the same pipeline as `kiln optimize` (same export, Q/DQ model, runners and
interleaved rounds), always re-measuring (--force), into a throw-away artifact store; with
`--artifacts STORE` (a folder `kiln optimize --artifacts` filled) it re-measures every
candidate but reuses the engines built there, so a GPU lease does not pay for the compiles
twice.
`--hog N` starts N CPU-burning processes beside the measurement, to show what a busy machine
does to the numbers: they must stay within their intervals or be flagged as disturbed. On a
GPU machine with kiln[gpu] installed the CUDA and TensorRT rows appear by themselves.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from kiln.api.load import load_file
from kiln.api.spec import Backend
from kiln.api.status import State
from kiln.builder.context import BuildContext
from kiln.builder.feeds import random_feeds
from kiln.builder.pipeline import optimize
from kiln.builder.progress import RichReporter
from kiln.runtime.ort_runner import session_options
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Storage, parse_uri

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lipsync" / "optimizedmodel.yaml"


def ort_top_ops(model: Path, feeds: dict[str, Any], runs: int, top: int) -> list[tuple[str, float]]:
    """Share of ONNX Runtime CPU kernel time per operator type, from ORT's own profiler."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(None)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += float(event["dur"])
    total = sum(per_op.values()) or 1.0
    return sorted(((op, 100 * t / total) for op, t in per_op.items()), key=lambda x: -x[1])[:top]


def torch_top_ops(
    module: Any, feeds: dict[str, Any], names: list[str], runs: int, top: int
) -> list[tuple[str, float]]:
    args = [torch.from_numpy(feeds[n]) for n in names]
    with torch.inference_mode(), torch.profiler.profile() as prof:
        for _ in range(runs):
            module(*args)
    rows = [
        (e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.key.startswith("aten::")
    ]
    total = sum(t for _, t in rows) or 1.0
    return sorted(((k, 100 * t / total) for k, t in rows), key=lambda x: -x[1])[:top]


def print_table(status: Any) -> None:
    print(
        f"\n{'target':<8} {'candidate':<26} {'batch':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'samples/s':>9} {'speedup':>8} {'95% interval':>13} {'rounds':>6} {'conv.':>5} "
        f"{'PSI %':>5}  gate  disturbed"
    )
    for target in status.targets:
        for cand in target.candidates:
            if cand.state is not State.OK:
                continue
            for b in cand.benchmarks:
                gate = "pass" if cand.accuracy and cand.accuracy.passed else "FAIL"
                iv = b.speedup_interval
                interval = f"{iv.low:.2f}-{iv.high:.2f}" if iv else "-"
                psi = "-" if b.cpu_pressure_percent is None else f"{b.cpu_pressure_percent:.0f}"
                print(
                    f"{target.name:<8} {cand.name:<26} {b.batch_size:>5} "
                    f"{b.latency_ms.p50:>8.2f} {b.latency_ms.p99:>8.2f} {b.throughput:>9.1f} "
                    f"{(b.speedup or 0):>7.2f}x {interval:>13} {b.rounds:>6} "
                    f"{'yes' if b.converged else 'no':>5} {psi:>5}  {gate:<4}  {b.disturbed or '-'}"
                )
        env = target.environment
        if env is not None and target.state is State.OK:
            print(f"{target.name}: {env.cpu_threads} threads ({env.threads_source})")
            print(f"{target.name}: selected {target.selected}: {target.selection_reason}")
        for cand in target.candidates:
            if cand.state is not State.OK:
                print(f"{target.name:<8} {cand.name:<26} {cand.state.value}: {cand.reason}")


def cpu_profile(ctx: BuildContext, status: Any, spec: Any, top: int) -> None:
    """Where the time goes, at the largest batch size, on the CPU."""
    from kiln.builder.fetch import fetch_source
    from kiln.builder.torch_source import load_torch_module

    batch = spec.batch_sizes[-1]
    feeds = random_feeds(spec.inputs, batch, seed=0)
    names = [t.name for t in spec.inputs]
    runs = 5
    print(f"\nWhere the time goes on CPU at batch {batch} ({runs} runs, share of operator time):")
    module = load_torch_module(spec, fetch_source(ctx).path, ctx.base_dir)
    rows = [("pytorch eager", torch_top_ops(module, feeds, names, runs, top))]
    for label, uri in (
        ("onnxruntime fp32", status.onnx_artifact),
        ("onnxruntime int8", status.quantized_artifact),
    ):
        if uri:
            rows.append((label, ort_top_ops(Path(parse_uri(uri).key), feeds, runs, top)))
    for label, ops in rows:
        print(f"  {label:<18} " + ", ".join(f"{op} {share:.0f}%" for op, share in ops))


def burn() -> None:
    while True:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=EXAMPLE)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=20.0, help="cap per candidate and batch")
    parser.add_argument("--top", type=int, default=5, help="operators listed per runtime")
    parser.add_argument("--hog", type=int, default=0, help="CPU-burning processes beside it")
    parser.add_argument(
        "--torch-compile", action="store_true", help="also measure torch.compile (JIT)"
    )
    parser.add_argument(
        "--artifacts", type=Path, help="reuse the engines built in this store; re-measure all"
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also measure Kiln's selected CPU engine against OpenVINO built outside Kiln",
    )
    args = parser.parse_args()
    hogs = [multiprocessing.Process(target=burn, daemon=True) for _ in range(args.hog)]
    for hog in hogs:
        hog.start()
    try:
        return measure(args)
    finally:
        for hog in hogs:
            hog.terminate()


def backends(wanted: list[Backend], torch_compile: bool) -> list[Backend]:
    """The spec's backends with AOTInductor always, torch.compile only when asked."""
    chosen = {*wanted, Backend.AOTINDUCTOR} - (
        {Backend.TORCH_COMPILE} if not torch_compile else set()
    )
    if torch_compile:
        chosen.add(Backend.TORCH_COMPILE)
    return [b for b in Backend if b in chosen]


def measure(args: argparse.Namespace) -> int:

    model = load_file(args.spec)
    spec = model.spec.model_copy(
        update={
            "batch_sizes": sorted(args.batch_sizes),
            "backends": backends(model.spec.backends, args.torch_compile),
            "benchmark": model.spec.benchmark.model_copy(update={"max_seconds": args.seconds}),
        }
    )
    model = model.model_copy(update={"spec": spec})
    storage = Storage()
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as work:
        store = args.artifacts.resolve() if args.artifacts else Path(work) / "store"
        ctx = BuildContext(
            model=model,
            base_dir=args.spec.resolve().parent,
            storage=storage,
            artifacts=ArtifactStore(storage, parse_uri(str(store)), Path(work) / "c"),
            work_dir=Path(work) / "w",
            cache_dir=Path(work) / "c",
            reporter=RichReporter(),
            force=args.artifacts is None,
            remeasure=True,
        )
        outcome = optimize(ctx)
        status = outcome.status
        print_table(status)
        print(f"\n{status.summary}")
        cpu = next((t for t in status.targets if t.device == "cpu" and t.state is State.OK), None)
        if cpu is not None:
            cpu_profile(ctx, status, spec, args.top)
        if cpu is not None and args.peers:
            sys.path.insert(0, str(ROOT))  # the script's folder is on the path, not its package
            from benchmarks.cpu_peers import compare_with_peers

            threads = cpu.environment.cpu_threads if cpu.environment else None
            compare_with_peers(ctx, cpu, spec.batch_sizes, threads or 1)
    print(
        f"\nnumpy {np.__version__}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
    return 0 if status.phase.value != "Failed" else 1


if __name__ == "__main__":
    sys.exit(main())
