"""Build a TensorRT engine from an ONNX model. Run as a subprocess by the builder:

    python -m kiln.runtime.trt_build --onnx M.onnx --engine E.plan --timing-cache C \
        --shape image=1x6x320x320:4x6x320x320:8x6x320x320 ...

so a crash inside TensorRT (a segfault, an abort in a plugin) is a FAILED candidate and not a
dead builder. Precision comes from the model itself, never from builder flags: TensorRT 11
removed weak typing, so FP16 candidates are built from an FP16-converted ONNX model and INT8
candidates from the explicit Q/DQ model, both as strongly typed networks (TensorRT >= 10).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ShapeProfile:
    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_arg(self) -> str:
        dims = ["x".join(map(str, s)) for s in (self.min, self.opt, self.max)]
        return f"{self.name}=" + ":".join(dims)

    @staticmethod
    def parse(text: str) -> ShapeProfile:
        name, _, dims = text.partition("=")
        # A scalar input's shape is empty: "name=::".
        parts = [tuple(int(d) for d in p.split("x") if d) for p in dims.split(":")]
        if not name or len(parts) != 3:
            raise ValueError(f"expected NAME=MIN:OPT:MAX with AxBxC shapes, got {text!r}")
        return ShapeProfile(name, parts[0], parts[1], parts[2])


def versions() -> dict[str, str]:
    """TensorRT and CUDA versions: part of every engine's and timing cache's key."""
    import tensorrt as trt
    import torch

    return {"tensorrt": str(trt.__version__), "cuda": str(torch.version.cuda)}


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profiles: list[ShapeProfile],
    timing_cache: Path | None,
    workspace_bytes: int = 4 << 30,
) -> dict[str, Any]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError("TensorRT could not parse the ONNX model: " + "; ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for p in profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT returned no engine (see the builder log above)")
    engine_path.write_bytes(bytes(serialized))
    if timing_cache is not None:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"engine": str(engine_path), "bytes": engine_path.stat().st_size, **versions()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln.runtime.trt_build", description=__doc__)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--engine", type=Path, required=True)
    parser.add_argument("--timing-cache", type=Path)
    parser.add_argument("--shape", action="append", default=[], type=ShapeProfile.parse)
    args = parser.parse_args(argv)
    try:
        info = build_engine(args.onnx, args.engine, args.shape, args.timing_cache)
    except Exception as exc:  # reported to the parent as a FAILED candidate
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
