"""Which quantizer makes the Q/DQ INT8 model ONNX Runtime and TensorRT build from: ONNX
Runtime's `quantize_static` (entropy, Kiln's quantizer before NNCF) against NNCF's ONNX
post-training quantization (Kiln's default), on the same calibration samples, judged on the
same held-out gate samples and timed side by side in ONNX Runtime.

    .venv/bin/python benchmarks/qdq_quantizers.py [SPEC] [--artifacts STORE] [--seconds 10]
        [--dump DIR] [--extra LABEL=MODEL.onnx ...]

`--dump DIR` writes the FP32 ONNX model and the calibration samples (`calibration.npz`, each
input stacked along its batch axis, in the order the quantizers read them) for a quantizer
outside this environment (NVIDIA ModelOpt's ONNX PTQ needs its own pins), and stops;
`--extra` then judges and times the model it made beside Kiln's, on the same samples.

It runs Kiln's export half (reusing what STORE holds) for the ONNX model, the samples and the
references, quantizes with each of Kiln's two quantizers (`calibration.quantizer`) and with
NNCF's own preset (asymmetric activations for a transformer; Kiln's is symmetric, the form
TensorRT takes: zero points 0), and prints each model's relative L2 error, whether its zero
points are all 0, and its throughput in ONNX Runtime at each batch size, with the ratio to
Kiln's Q/DQ model and its 95 % interval."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lipsync" / "optimizedmodel.yaml"
ORT = "onnxruntime quantize_static"  # the ratios' base


def nncf_qdq(onnx_path: Path, samples: list[dict[str, Any]], out: Path) -> Path:
    """NNCF's own preset, as its documentation calls it."""
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = onnx.load(str(onnx_path))
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
    onnx.save(quantized, str(out))
    return out


class _Quiet:
    def advance(self, amount: int = 1) -> None:
        pass


def kiln_qdq(onnx_path: Path, samples: list[dict[str, Any]], out: Path, quantizer: str) -> Path:
    """The Q/DQ model Kiln makes with `calibration.quantizer: quantizer` and its own method."""
    from kiln.api.spec import Calibration, CalibrationMethod, Quantizer
    from kiln.builder.nncf_quantize import quantize_qdq_nncf
    from kiln.builder.quantize import quantize_qdq

    again = lambda: iter(samples)  # noqa: E731
    if quantizer == "nncf":
        cal = Calibration(uri="-", quantizer=Quantizer.NNCF)
        quantize_qdq_nncf(onnx_path, out, again, cal, len(samples), _Quiet())
    else:
        quantize_qdq(onnx_path, out, again, CalibrationMethod.ENTROPY, 99.999, _Quiet())
    return out


def dump(folder: Path, source: Path, samples: list[dict[str, Any]]) -> None:
    """The model and the samples, for a quantizer run elsewhere (every input batched on 0)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "model.onnx")
    stacked = {name: np.concatenate([s[name] for s in samples]) for name in samples[0]}
    np.savez(folder / "calibration.npz", **stacked)  # type: ignore[arg-type]
    print(f"wrote {folder / 'model.onnx'} and {folder / 'calibration.npz'} ({len(samples)})")


def zero_points_all_zero(path: Path) -> bool:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is not None and np.any(numpy_helper.to_array(zp) != 0):
                return False
    return True


def main() -> int:
    from kiln.api.load import load_file
    from kiln.api.spec import Precision
    from kiln.builder.benchmark import measure_rounds
    from kiln.builder.context import BuildContext
    from kiln.builder.feeds import random_feeds
    from kiln.builder.prepare import prepare, quantizer_feeds
    from kiln.builder.progress import RichReporter
    from kiln.builder.stats import mean, median_interval
    from kiln.builder.verify import compare
    from kiln.runtime.base import Runner, infer
    from kiln.runtime.ort_runner import OrtRunner
    from kiln.storage.artifacts import ArtifactStore
    from kiln.storage.objects import Storage, parse_uri

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=EXAMPLE)
    parser.add_argument("--artifacts", type=Path, default=ROOT / ".kiln" / "artifacts")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dump", type=Path, default=None)
    parser.add_argument("--extra", action="append", default=[], help="LABEL=MODEL.onnx")
    args = parser.parse_args()
    model = load_file(args.spec)
    spec = model.spec
    spec = spec.model_copy(
        update={"benchmark": spec.benchmark.model_copy(update={"max_seconds": args.seconds})}
    )
    model = model.model_copy(update={"spec": spec})
    storage = Storage()
    with tempfile.TemporaryDirectory(prefix="kiln-qdq-") as work:
        ctx = BuildContext(
            model=model,
            base_dir=args.spec.resolve().parent,
            storage=storage,
            artifacts=ArtifactStore(storage, parse_uri(str(args.artifacts.resolve())), Path(work)),
            work_dir=Path(work) / "w",
            cache_dir=Path(work) / "c",
            reporter=RichReporter(),
        )
        prepared = prepare(ctx, want_fp16=False)
        samples = list(quantizer_feeds(spec, prepared))
        source, there = prepared.onnx.path, Path(work)
        if args.dump is not None:
            dump(args.dump, source, samples)
            return 0
        models = {
            ORT: kiln_qdq(source, samples, there / "o.onnx", "onnxruntime"),
            "nncf symmetric (Kiln's default)": kiln_qdq(source, samples, there / "k.onnx", "nncf"),
            "nncf's own preset": nncf_qdq(source, samples, there / "n.onnx"),
        }
        for extra in args.extra:
            label, _, path = extra.partition("=")
            models[label] = Path(path)
        threads = args.threads or spec.benchmark.threads
        print(f"\n{len(samples)} calibration samples; {len(prepared.samples)} gate samples")
        print(f"{'model':<36} {'rel. L2 error':>13} {'zero points 0':>13}")
        runners: dict[str, Runner] = {}
        for label, path in models.items():
            runner = OrtRunner(label, path, spec.outputs, "cpu", threads)
            outputs = [infer(runner, s) for s in prepared.samples]
            result = compare(
                outputs, prepared.references, spec.outputs, spec.accuracy, Precision.INT8
            )
            print(f"{label:<36} {result.relative_error:>13.2e} {zero_points_all_zero(path)!s:>13}")
            runners[label] = runner
        runners["onnxruntime fp32"] = OrtRunner(
            "fp32", prepared.onnx.path, spec.outputs, "cpu", threads
        )
        kiln = ORT
        for batch in spec.batch_sizes:
            feeds = random_feeds(spec.inputs, batch, seed=0)
            for each in runners.values():
                each.prepare(feeds)
            rounds = measure_rounds(runners, kiln, spec.benchmark)
            base = rounds.timings[kiln]
            print(f"\nbatch {batch} (CPU pressure {rounds.pressure_percent or 0:.0f} %)")
            for label, timing in rounds.timings.items():
                ratios = [
                    mean(b) / mean(t) for b, t in zip(base.windows, timing.windows, strict=False)
                ]
                iv = median_interval(ratios)
                rate = batch / median_interval([mean(w) for w in timing.windows]).median
                print(
                    f"  {label:<36} {rate:>8.1f}/s  {iv.median:.2f}x [{iv.low:.2f}-{iv.high:.2f}]"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
