"""Stage: fetch the calibration set, and the validation set if the spec has one, and check
them. Both are folders of .npz shards, one array per input named by it, holding the samples
along the input's batch axis (axis 0 unless `batchAxis` says otherwise: a shard is a batch
the model could take); an input with no batch axis holds them on a new leading axis."""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec, TensorSpec
from kiln.builder.context import BuildContext, named
from kiln.builder.feeds import batch_count, take
from kiln.runtime.base import Feeds
from kiln.runtime.dtypes import NUMPY_DTYPES
from kiln.storage.artifacts import file_digest


@dataclass(frozen=True)
class SampleSet:
    """A fetched and checked folder of shards: the calibration set or a validation set."""

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
        count, problem = _sample_count(tensor, array.shape)
        if problem:
            raise KilnInputError(
                label,
                f"array {tensor.name!r} has shape {list(array.shape)}, expected "
                f"{_shard_shape(tensor)} from spec.inputs[{index}].shape (samples on "
                f"{'a new leading axis' if tensor.batch_axis is None else 'the batch axis'})",
            )
        expected = np.dtype(NUMPY_DTYPES[tensor.dtype])
        if array.dtype != expected:
            raise KilnInputError(
                label,
                f"array {tensor.name!r} has dtype {array.dtype}, expected {expected} "
                f"from spec.inputs[{index}].dtype",
            )
        _require_finite(array, tensor.name, label)
        counts.add(count)
    if len(counts) != 1:
        raise KilnInputError(label, f"arrays hold different sample counts {sorted(counts)}")
    # Per-sample shapes: an input with no batch axis holds its samples on an extra axis 0.
    shapes = {
        t.name: arrays[t.name].shape[1:] if t.batch_axis is None else arrays[t.name].shape
        for t in spec.inputs
    }
    conflict = spec.length_conflict(shapes)
    if conflict:
        raise KilnInputError(label, conflict)
    return counts.pop()


def _sample_count(tensor: TensorSpec, shape: tuple[int, ...]) -> tuple[int, str | None]:
    """(samples, problem) of one input's array in a shard: the samples lie on its batch
    axis, or on a new leading axis where it has none."""
    axis = tensor.batch_axis
    if axis is None:
        if not shape:
            return 0, "no samples axis"
        return shape[0], tensor.mismatch(shape[1:])
    if len(shape) != len(tensor.shape):
        return 0, "rank"
    one = [*shape[:axis], 1, *shape[axis + 1 :]]
    return shape[axis], tensor.mismatch(one)


def _shard_shape(tensor: TensorSpec) -> list[int | str]:
    wanted = tensor.wanted()
    if tensor.batch_axis is None:
        return ["N", *wanted]
    return [*wanted[: tensor.batch_axis], "N", *wanted[tensor.batch_axis + 1 :]]


def _require_finite(array: np.ndarray, name: str, label: str) -> None:
    """NaN or infinity would make a gate fail (or pass) for no reason of the engine's, and
    would spoil the INT8 scales fitted to it."""
    if array.dtype.kind != "f":
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise KilnInputError(
            label, f"array {name!r} holds {bad} NaN or infinite value(s); expected finite numbers"
        )


def fetch_sample_set(ctx: BuildContext, field: str, uri: str) -> SampleSet:
    """Fetch every .npz shard under `uri` and check it against spec.inputs; errors name
    `field`."""
    root = ctx.locate(field, uri)
    with named(field):
        shards = [loc for loc in ctx.storage.list(root) if loc.key.endswith(".npz")]
        if not shards:
            raise KilnInputError(root.uri, "no .npz shards found")
        paths = [ctx.storage.fetch(loc, ctx.cache_dir / "objects") for loc in shards]
    counts = [
        check_shard(p, f"{field} ({loc.uri})", ctx.spec)
        for p, loc in zip(paths, shards, strict=True)
    ]
    digest = hashlib.sha256("".join(file_digest(p) for p in paths).encode()).hexdigest()
    return SampleSet(root.uri, paths, counts, "sha256:" + digest)


def _require(found: SampleSet, field: str, asked: int) -> None:
    if found.available < asked:
        raise KilnInputError(
            field,
            f"asks for {asked} samples but {found.uri} holds {found.available} "
            f"in {len(found.shards)} shard(s)",
        )


def fetch_calibration(ctx: BuildContext) -> SampleSet:
    cal = ctx.spec.calibration
    assert cal is not None
    found = fetch_sample_set(ctx, "spec.calibration.uri", cal.uri)
    _require(found, "spec.calibration.samples", cal.samples)
    return found


def fetch_validation(ctx: BuildContext) -> SampleSet | None:
    """The validation set of spec.accuracy.uri, None where the spec names none."""
    accuracy = ctx.spec.accuracy
    if accuracy.uri is None:
        return None
    found = fetch_sample_set(ctx, "spec.accuracy.uri", accuracy.uri)
    _require(found, "spec.accuracy.samples", accuracy.samples)
    return found


def _indexed(found: SampleSet, spec: OptimizedModelSpec) -> Iterator[tuple[int, Feeds]]:
    """(index in the whole set, single-sample feeds) in shard order, one shard in memory."""
    index = 0
    for shard in found.shards:
        with np.load(shard, allow_pickle=False) as data:
            arrays = {t.name: data[t.name] for t in spec.inputs}
        for i in range(batch_count(arrays, spec.inputs)):
            yield index, take(arrays, spec.inputs, i)
            index += 1


def iter_samples(
    found: SampleSet,
    spec: OptimizedModelSpec,
    limit: int,
    skip: frozenset[int] = frozenset(),
) -> Iterator[Feeds]:
    """Single-sample feeds in shard order, at most `limit` of them, leaving out the indices
    in `skip` (the samples held out for the gates)."""
    if limit <= 0:
        return
    produced = 0
    for index, sample in _indexed(found, spec):
        if index in skip:
            continue
        yield sample
        produced += 1
        if produced >= limit:
            return


def take_samples(found: SampleSet, spec: OptimizedModelSpec, indices: Sequence[int]) -> list[Feeds]:
    """The samples at `indices` (positions in the whole set), in that order; copies, so no
    shard stays in memory for one sample's sake."""
    wanted = set(indices)
    picked: dict[int, Feeds] = {}
    for index, sample in _indexed(found, spec):
        if index in wanted:
            picked[index] = {name: array.copy() for name, array in sample.items()}
            if len(picked) == len(wanted):
                break
    return [picked[i] for i in indices]
