"""Sample inputs shaped and typed by the spec, for checks and benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from kiln.api.spec import DType, OptimizedModelSpec, TensorSpec, batch_size_of
from kiln.runtime.base import Array, Feeds
from kiln.runtime.dtypes import NUMPY_DTYPES


def random_feeds(
    inputs: list[TensorSpec], batch: int, seed: int, lengths: Mapping[str, int] | None = None
) -> Feeds:
    """Deterministic inputs: normal floats; integers and booleans over each input's declared
    `range` (else 0..15, and both truth values); dynamic axes at `lengths` (default each
    one's opt)."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for tensor in inputs:
        shape = tensor.concrete_shape(batch, lengths)
        dtype = NUMPY_DTYPES[tensor.dtype]
        if tensor.dtype in (DType.FLOAT32, DType.FLOAT16):
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
        else:
            default = (0, 1) if tensor.dtype is DType.BOOL else (0, 15)
            low, high = tensor.value_range or default
            feeds[tensor.name] = rng.integers(low, high + 1, shape).astype(dtype)
    return feeds


def example_feeds(
    inputs: list[TensorSpec],
    examples: Sequence[Feeds],
    batch: int,
    seed: int,
    lengths: Mapping[str, int] | None = None,
) -> Feeds:
    """What checks and exports call the model with: the user's own samples (a calibration or
    validation set), each cut or repeated to `lengths` (default each axis's opt) and stacked
    to `batch`, so an integer input holds values the model accepts (a vocabulary of 2, a
    sample rate); seeded random values only where there are no samples."""
    if not examples:
        return random_feeds(inputs, batch, seed, lengths)
    full = {
        name: (lengths or {}).get(name, entry.optimal)
        for tensor in inputs
        for name, entry in tensor.axes().values()
    }
    fitted = [fit_lengths({t.name: e[t.name] for t in inputs}, inputs, full) for e in examples]
    return stack(fitted, inputs, batch, offset=seed)


def stack(
    samples: Sequence[Feeds], inputs: Sequence[TensorSpec], batch: int, offset: int = 0
) -> Feeds:
    """A batch built from single samples along each input's batch axis, cycling when there
    are fewer samples than `batch`. An input with no batch axis is one value for the whole
    batch: the first pick's."""
    picks = [samples[(offset + i) % len(samples)] for i in range(batch)]
    out: Feeds = {}
    for tensor in inputs:
        axis = tensor.batch_axis
        parts = [p[tensor.name] for p in picks]
        out[tensor.name] = parts[0] if axis is None else np.concatenate(parts, axis=axis)
    return out


def batch_count(feeds: Mapping[str, Array], inputs: Sequence[TensorSpec]) -> int:
    """The batch size `feeds` hold: 1 where no input has a batch axis."""
    return batch_size_of(inputs, {t.name: feeds[t.name].shape for t in inputs})


def take(arrays: Mapping[str, Array], inputs: Sequence[TensorSpec], index: int) -> Feeds:
    """Sample `index` of arrays that hold samples along each input's batch axis (a sample
    keeps that axis, at 1); an input with no batch axis holds them on a new leading axis."""
    out: Feeds = {}
    for tensor in inputs:
        array = arrays[tensor.name]
        axis = tensor.batch_axis
        out[tensor.name] = array[index] if axis is None else np.take(array, [index], axis=axis)
    return out


def split(feeds: Feeds, inputs: Sequence[TensorSpec]) -> list[Feeds]:
    """Single-sample feeds from a batch, along each input's batch axis."""
    count = batch_count(feeds, inputs)
    out: list[Feeds] = []
    for i in range(count):
        out.append(
            {
                t.name: feeds[t.name]
                if t.batch_axis is None
                else np.take(feeds[t.name], [i], axis=t.batch_axis)
                for t in inputs
            }
        )
    return out


def fit_lengths(feeds: Feeds, inputs: list[TensorSpec], lengths: Mapping[str, int]) -> Feeds:
    """`feeds` with each dynamic axis cut or repeated to its length in `lengths`. Repeating
    real samples keeps their values real (a mask stays ones, ids stay in the vocabulary),
    which random values would not: the benchmark times real work at every length."""
    out = dict(feeds)
    for tensor in inputs:
        array = out[tensor.name]
        for axis, (name, _) in tensor.axes().items():
            want = lengths.get(name, array.shape[axis])
            reps = -(-want // array.shape[axis])
            if reps > 1:
                array = np.concatenate([array] * reps, axis=axis)
            array = np.take(array, np.arange(want), axis=axis)
        # Not ascontiguousarray: that turns a scalar (0-d) into shape [1].
        out[tensor.name] = np.asarray(array, order="C")
    return out


def trace_lengths(spec: OptimizedModelSpec, batch: int) -> dict[str, int]:
    """Lengths to trace the export at: each in its range, none 0 or 1, and all distinct from
    each other and from the traced batch. Tracing specialises a size of 1 to a constant and
    assumes sizes that happen to be equal are the same symbol, which would tie the axes."""
    taken = {batch}
    out: dict[str, int] = {}
    dims = spec.dims()
    # The narrowest ranges choose first: they have the fewest lengths to choose from.
    for name, dim in sorted(dims.items(), key=lambda item: item[1].max - item[1].min):
        choices = itertools.chain([dim.optimal], range(max(dim.min, 2), dim.max + 1))
        pick = next((c for c in choices if c >= 2 and c not in taken), dim.optimal)
        out[name] = pick
        taken.add(pick)
    return {name: out[name] for name in dims}
