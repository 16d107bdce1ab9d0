"""Sample inputs shaped and typed by the spec, for checks and benchmarks."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from kiln.api.spec import DType, OptimizedModelSpec, TensorSpec
from kiln.runtime.base import Feeds
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
    return stack(fitted, batch, offset=seed)


def stack(samples: list[Feeds], batch: int, offset: int = 0) -> Feeds:
    """A batch built from single samples, cycling when there are fewer samples than `batch`."""
    names = list(samples[0])
    picks = [samples[(offset + i) % len(samples)] for i in range(batch)]
    return {n: np.concatenate([p[n] for p in picks], axis=0) for n in names}


def split(feeds: Feeds) -> list[Feeds]:
    """Single-sample feeds from a batch (axis 0)."""
    count = next(iter(feeds.values())).shape[0]
    return [{n: v[i : i + 1] for n, v in feeds.items()} for i in range(count)]


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
        out[tensor.name] = np.ascontiguousarray(array)
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
