"""What a dynamic sequence axis saves: each engine run at a request's own length against the
same engine on that request padded to the longest length, measured side by side in
interleaved rounds in one run, with 95 % intervals, for PyTorch eager, ONNX Runtime and
AOTInductor.

    .venv/bin/python benchmarks/sequence_lengths.py [--lengths 16 32 64] [--max 128]
        [--batch 1] [--width 256] [--layers 4] [--heads 4] [--seconds 10]

The model is a BERT-like encoder (tests/fixtures/tiny_models.TinyEncoder, at BERT-mini's size
by default: width 256, 4 layers, 4 heads, feed-forward 1024, vocabulary 30522), exported as a
torch.export program with one `seq` axis that input_ids and attention_mask share, then built
by Kiln's own pipeline (the export and AOTInductor compile of `kiln optimize`, into a
throw-away store), whose benchmark prints each engine's speedup over PyTorch eager at every
length, measured side by side at that length. Then, per engine, the rounds hold the padded run
(length --max: the baseline)
and one run per length; a ratio above 1 is what a request of that length gains from the
dynamic axis over padding. The answers agree either way only because the model masks its
padding, which is what the mask is for. Compare runs on the same machine; on this project's
2-core machine nothing else may run beside it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln.api.load import load_file  # noqa: E402
from kiln.api.spec import Benchmark  # noqa: E402
from kiln.builder.benchmark import measure_rounds, results  # noqa: E402
from kiln.builder.context import BuildContext  # noqa: E402
from kiln.builder.pipeline import optimize  # noqa: E402
from kiln.builder.progress import RichReporter  # noqa: E402
from kiln.runtime.aoti_runner import AotiRunner  # noqa: E402
from kiln.runtime.base import Runner  # noqa: E402
from kiln.runtime.binding import call_for  # noqa: E402
from kiln.runtime.ort_runner import OrtRunner  # noqa: E402
from kiln.runtime.threads import apply_torch_threads, available_threads  # noqa: E402
from kiln.runtime.torch_runner import TorchRunner  # noqa: E402
from kiln.storage.artifacts import ArtifactStore  # noqa: E402
from kiln.storage.objects import Storage, parse_uri  # noqa: E402
from tests.fixtures.tiny_models import save_encoder_program  # noqa: E402

NAMES = ["input_ids", "attention_mask"]
OUTPUTS = ["hidden", "pooled"]
VOCAB = 30522


def spec_document(args: argparse.Namespace) -> dict[str, Any]:
    seq = {"axis": 1, "name": "seq", "min": 8, "opt": args.max, "max": args.max}
    tensor = {"shape": [-1, -1], "dtype": "int64", "dynamic": [seq]}
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "encoder"},
        "spec": {
            "source": {"uri": "encoder.pt2"},
            "inputs": [{"name": n, **tensor} for n in NAMES],
            "outputs": OUTPUTS,
            "batchSizes": [args.batch],
            "backends": ["pytorch", "onnxruntime", "aotinductor"],
            "precisions": ["fp32"],
            # Kiln's own benchmark: every engine against PyTorch eager at each length.
            "benchmark": {
                "shapes": [{"seq": n} for n in [*args.lengths, args.max]],
                "maxSeconds": args.seconds,
                "windowSeconds": 0.2,
            },
        },
    }


def feeds(batch: int, length: int, real: int) -> dict[str, np.ndarray]:
    """A request of `real` tokens at `length`: the tokens past `real` are padding."""
    rng = np.random.default_rng(0)
    mask = np.zeros((batch, length), np.int64)
    mask[:, :real] = 1
    ids = rng.integers(0, VOCAB, (batch, length)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}


def engines(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Build and benchmark the engines with Kiln's pipeline (printing each one's speedup over
    PyTorch eager at every length); return a factory of runners per engine."""
    (work / "encoder.yaml").write_text(yaml.safe_dump(spec_document(args), sort_keys=False))
    size = {"vocab": VOCAB, "width": args.width, "layers": args.layers, "heads": args.heads}
    save_encoder_program(work / "encoder.pt2", 8, args.max, hidden=4 * args.width, **size)
    model = load_file(work / "encoder.yaml")
    storage = Storage()
    ctx = BuildContext(
        model=model,
        base_dir=work,
        storage=storage,
        artifacts=ArtifactStore(storage, parse_uri(str(work / "store")), work / "c"),
        work_dir=work / "w",
        cache_dir=work / "c",
        reporter=RichReporter(),
        force=True,
    )
    status = optimize(ctx).status
    target = next(t for t in status.targets if t.name == "cpu")
    print_speedups(target)
    package = next(c for c in target.candidates if c.name == "aotinductor-cpu-fp32")
    onnx = Path(parse_uri(status.onnx_artifact or "").key)
    aoti = Path(parse_uri(package.artifact or "").key)
    program = torch.export.load(str(work / "encoder.pt2")).module()
    threads = available_threads().count
    return {
        "pytorch": lambda name: TorchRunner(name, program, call_for(None, NAMES), "cpu"),
        "onnxruntime": lambda name: OrtRunner(name, onnx, OUTPUTS, "cpu", threads),
        "aotinductor": lambda name: AotiRunner(name, aoti, NAMES, "cpu", threads),
    }


def print_speedups(target: Any) -> None:
    """Kiln's benchmark: each engine and PyTorch eager in the same rounds at each length."""
    print("\n| engine | length | p50 ms | speedup over PyTorch eager [95%] | disturbed |")
    print("|---|---|---|---|---|")
    for c in target.candidates:
        for b in c.benchmarks:
            interval = b.speedup_interval
            around = f"[{interval.low:.2f}-{interval.high:.2f}]" if interval else "[-]"
            print(
                f"| {c.name} | {(b.lengths or {}).get('seq')} | {b.latency_ms.p50:.3g} | "
                f"{b.speedup or 0:.2f}x {around} | {b.disturbed or '-'} |"
            )


def measure(engine: str, make: Any, args: argparse.Namespace, settings: Benchmark) -> None:
    shortest = min(args.lengths)
    runners: dict[str, Runner] = {}
    for length in [args.max, *args.lengths]:
        name = f"{engine}@{length}"
        runner: Runner = make(name)
        real = shortest if length == args.max else length
        runner.prepare(feeds(args.batch, length, real))
        runners[name] = runner
    baseline = f"{engine}@{args.max}"
    rounds = measure_rounds(runners, baseline, settings)
    padded = results(rounds, baseline, args.batch, settings)
    base = padded[baseline].latency_ms.p50
    for length in args.lengths:
        b = padded[f"{engine}@{length}"]
        interval = b.speedup_interval
        around = f"[{interval.low:.2f}-{interval.high:.2f}]" if interval else "[-]"
        flag = b.disturbed or ("" if b.converged else "not converged (cap)")
        print(
            f"| {engine} | {length} | {b.latency_ms.p50:.3g} | {base:.3g} | "
            f"{b.speedup or 0:.2f}x {around} | {b.rounds} | {flag or '-'} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--max", type=int, default=128, help="the padded length")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="cap per engine and length")
    args = parser.parse_args()
    if not all(8 <= n < args.max for n in args.lengths):
        parser.error(f"--lengths: each must lie in [8, {args.max})")
    apply_torch_threads(available_threads().count)
    settings = Benchmark(max_seconds=args.seconds, window_seconds=0.2)
    with tempfile.TemporaryDirectory(prefix="kiln-lengths-") as work:
        makers = engines(Path(work), args)
        print(
            f"\nbatch {args.batch}, padded to {args.max}; encoder width {args.width}, "
            f"{args.layers} layers, {args.heads} heads, {available_threads().count} threads\n"
        )
        print(
            "| engine | length | p50 ms | padded p50 ms | gain over padding [95%] | rounds | "
            "disturbed |"
        )
        print("|---|---|---|---|---|---|---|")
        for engine, make in makers.items():
            measure(engine, make, args, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
