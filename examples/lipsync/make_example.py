"""Write the example's model and calibration set into local storage (examples/lipsync/data/).

Everything is generated here from fixed seeds: nothing is downloaded. Existing files are kept
(so the model digest, and with it every cache key, stays the same across runs) unless --force.

    python examples/lipsync/make_example.py [--samples 128] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import LipSync  # type: ignore[import-not-found]  # noqa: E402


def smooth_images(rng: np.random.Generator, count: int) -> np.ndarray:
    """Face-crop-like inputs: low-frequency patterns in [0, 1], not white noise, so that
    calibration sees activation ranges like real images produce."""
    coarse = rng.random((count, 6, 10, 10), dtype=np.float32)
    up = coarse.repeat(32, axis=2).repeat(32, axis=3)
    return np.clip(up + 0.05 * rng.standard_normal(up.shape, dtype=np.float32), 0, 1)


def mel_windows(rng: np.random.Generator, count: int) -> np.ndarray:
    return (0.5 * rng.standard_normal((count, 512, 1, 8), dtype=np.float32)).astype(np.float32)


def write_model(data: Path, force: bool) -> None:
    program_path = data / "lipsync.pt2"
    weights_path = data / "lipsync_weights.pt"
    if program_path.exists() and weights_path.exists() and not force:
        return
    torch.manual_seed(0)
    model = LipSync().eval()
    # Non-trivial BatchNorm statistics, as a trained network would have.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert module.running_mean is not None
                assert module.running_var is not None
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), weights_path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    example = (torch.rand(2, 6, 320, 320), torch.randn(2, 512, 1, 8))
    program = torch.export.export(
        model, example, dynamic_shapes={"image": {0: batch}, "audio": {0: batch}}
    )
    torch.export.save(program, program_path)
    print(f"wrote {program_path} and {weights_path}")


def write_calibration(data: Path, samples: int, shard_size: int, force: bool) -> None:
    folder = data / "calibration"
    if folder.is_dir() and any(folder.glob("*.npz")) and not force:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npz"):
        old.unlink()
    rng = np.random.default_rng(7)
    for index, start in enumerate(range(0, samples, shard_size)):
        count = min(shard_size, samples - start)
        np.savez(
            folder / f"shard-{index:03d}.npz",
            image=smooth_images(rng, count),
            audio=mel_windows(rng, count),
        )
    print(f"wrote {samples} calibration samples to {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    write_model(args.data, args.force)
    write_calibration(args.data, args.samples, args.shard_size, args.force)


if __name__ == "__main__":
    main()
