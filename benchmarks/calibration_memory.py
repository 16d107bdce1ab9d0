"""Peak memory of INT8 calibration against the number of calibration samples: `kiln optimize`
of a Whisper-tiny-shaped encoder (transformers' `WhisperEncoder` from a config, random
weights: `input_features [N, 80, 3000]`, 4 layers, width 384, 6 heads) at each sample count,
each run in a process of its own, its peak resident set read from the kernel
(`ru_maxrss` of the finished child).

    .venv/bin/python benchmarks/calibration_memory.py [--samples 8 32]
        [--quantizer nncf|onnxruntime] [--method entropy|minmax|percentile]
        [--frames 3000] [--keep DIR]

Calibration memory is bounded by a chunk of samples (ONNX Runtime's quantizer,
kiln.builder.quantize: as many as fit 512 MiB of activations, one sample of this encoder
alone) or by one sample (NNCF reads one at a time), so the peak should not grow with the
count. Memory is not disturbed by other processes the way a timing is, but the runs are
long (each sample is a forward pass and a histogram of every activation): on a 2-core machine
a 512-sample run takes tens of minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
KILN = str(Path(sys.executable).parent / "kiln")

FACTORY = textwrap.dedent(
    """
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder


    class Encoder(torch.nn.Module):
        def __init__(self, frames):
            super().__init__()
            config = WhisperConfig(
                num_mel_bins=80, d_model=384, encoder_layers=4, encoder_attention_heads=6,
                encoder_ffn_dim=1536, max_source_positions=frames // 2,
            )
            self.encoder = WhisperEncoder(config)

        def forward(self, input_features):
            return self.encoder(input_features).last_hidden_state


    def build():
        torch.manual_seed(0)
        return Encoder(FRAMES).eval()
    """
)


def write_example(root: Path, samples: int, frames: int, calibration: dict[str, str]) -> Path:
    (root / "whisper_like.py").write_text(f"FRAMES = {frames}\n" + FACTORY)
    sys.path.insert(0, str(root))
    from whisper_like import build  # type: ignore[import-not-found]

    torch.save(build().state_dict(), root / "weights.pt")
    sys.path.remove(str(root))
    rng = np.random.default_rng(0)
    (root / "calibration").mkdir()
    for i in range(0, samples + 8, 8):  # shards of 8, 8 more than calibrated on (held out)
        features = rng.standard_normal((8, 80, frames)).astype(np.float32)
        np.savez(root / "calibration" / f"shard-{i // 8:04d}.npz", input_features=features)
    spec = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "whisper-like"},
        "spec": {
            "source": {"uri": "weights.pt", "factory": "whisper_like:build"},
            "inputs": [{"name": "input_features", "shape": [-1, 80, frames]}],
            "outputs": ["last_hidden_state"],
            "batchSizes": [1],
            "backends": ["pytorch", "onnxruntime"],
            "precisions": ["int8"],
            "calibration": {"uri": "calibration", "samples": samples, **calibration},
            "accuracy": {"samples": 2, "holdout": 2},
            "benchmark": {
                "warmupIterations": 1,
                "windowIterations": 1,
                "minRounds": 2,
                "maxRounds": 2,
                "maxSeconds": 1.0,
            },
            "artifacts": {"uri": "artifacts"},
        },
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def peak_rss_gib(spec: Path, out: Path) -> tuple[float, int]:
    """(peak RSS in GiB, exit code) of one `kiln optimize`, under a wrapper process of its
    own, so the peak is that run's (a process's children's ru_maxrss is the largest of all)."""
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:], capture_output=True).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
    )
    command = [sys.executable, "-c", wrapper, KILN, "optimize", str(spec), "-o", str(out), "-q"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    kib, code = done.stdout.split()
    return int(kib) / (1 << 20), int(code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--quantizer", default="nncf", choices=["nncf", "onnxruntime"])
    parser.add_argument("--method", default=None, choices=["entropy", "minmax", "percentile"])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--keep", type=Path, default=None)
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="kiln-calibration-memory-"))
    print(f"{args.quantizer}, {args.method or 'its own calibrator'}")
    print(f"{'samples':>8} {'peak RSS GiB':>13} {'exit':>5}")
    for count in sorted(args.samples):
        root = base / f"samples-{count}"
        root.mkdir(parents=True)
        calibration = {"quantizer": args.quantizer}
        if args.method is not None:  # else the quantizer's own calibrator
            calibration["method"] = args.method
        spec = write_example(root, count, args.frames, calibration)
        peak, code = peak_rss_gib(spec, root / "out")
        print(f"{count:>8} {peak:>13.2f} {code:>5}", flush=True)


if __name__ == "__main__":
    main()
