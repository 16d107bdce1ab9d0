"""Stage: fetch the calibration set (.npz shards, arrays named by input) and check it."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec
from kiln.builder.context import BuildContext, named
from kiln.runtime.base import Feeds
from kiln.runtime.dtypes import NUMPY_DTYPES
from kiln.storage.artifacts import file_digest


@dataclass(frozen=True)
class CalibrationSet:
    uri: str
    shards: list[Path]
    counts: list[int]
    digest: str

    @property
    def available(self) -> int:
        return sum(self.counts)


def check_shard(path: Path, label: str, spec: OptimizedModelSpec) -> int:
    """The number of samples in one shard, after checking every array against the inputs."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise KilnInputError(label, f"not a readable .npz file: {exc}") from None
    counts: set[int] = set()
    for index, tensor in enumerate(spec.inputs):
        if tensor.name not in arrays:
            raise KilnInputError(
                label,
                f"no array named {tensor.name!r} (spec.inputs[{index}]); it holds {sorted(arrays)}",
            )
        array = arrays[tensor.name]
        want = (tensor.shape[0] if not tensor.dynamic_batch else "N", *tensor.shape[1:])
        if array.ndim != len(tensor.shape) or tuple(array.shape[1:]) != tuple(tensor.shape[1:]):
            raise KilnInputError(
                label,
                f"array {tensor.name!r} has shape {list(array.shape)}, expected {list(want)} "
                f"from spec.inputs[{index}].shape",
            )
        expected = np.dtype(NUMPY_DTYPES[tensor.dtype])
        if array.dtype != expected:
            raise KilnInputError(
                label,
                f"array {tensor.name!r} has dtype {array.dtype}, expected {expected} "
                f"from spec.inputs[{index}].dtype",
            )
        counts.add(int(array.shape[0]))
    if len(counts) != 1:
        raise KilnInputError(label, f"arrays hold different sample counts {sorted(counts)}")
    return counts.pop()


def fetch_calibration(ctx: BuildContext) -> CalibrationSet:
    cal = ctx.spec.calibration
    assert cal is not None
    root = ctx.locate("spec.calibration.uri", cal.uri)
    with named("spec.calibration.uri"):
        shards = [loc for loc in ctx.storage.list(root) if loc.key.endswith(".npz")]
        if not shards:
            raise KilnInputError(root.uri, "no .npz shards found")
        paths = [ctx.storage.fetch(loc, ctx.cache_dir / "objects") for loc in shards]
    counts = [
        check_shard(p, f"spec.calibration.uri ({loc.uri})", ctx.spec)
        for p, loc in zip(paths, shards, strict=True)
    ]
    if sum(counts) < cal.samples:
        raise KilnInputError(
            "spec.calibration.samples",
            f"asks for {cal.samples} samples but {root.uri} holds {sum(counts)} "
            f"in {len(shards)} shard(s)",
        )
    digest = hashlib.sha256("".join(file_digest(p) for p in paths).encode()).hexdigest()
    return CalibrationSet(root.uri, paths, counts, "sha256:" + digest)


def iter_samples(cal: CalibrationSet, spec: OptimizedModelSpec, limit: int) -> Iterator[Feeds]:
    """Single-sample feeds in shard order, at most `limit` of them."""
    produced = 0
    for shard in cal.shards:
        with np.load(shard, allow_pickle=False) as data:
            arrays = {t.name: data[t.name] for t in spec.inputs}
        count = next(iter(arrays.values())).shape[0]
        for i in range(count):
            if produced >= limit:
                return
            yield {name: array[i : i + 1] for name, array in arrays.items()}
            produced += 1
