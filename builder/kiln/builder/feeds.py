"""Sample inputs shaped and typed by the spec, for checks and benchmarks."""

from __future__ import annotations

import numpy as np

from kiln.api.spec import DType, TensorSpec
from kiln.runtime.base import Feeds
from kiln.runtime.dtypes import NUMPY_DTYPES


def random_feeds(inputs: list[TensorSpec], batch: int, seed: int) -> Feeds:
    """Deterministic inputs: normal floats, small non-negative integers, random booleans."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for tensor in inputs:
        shape = tensor.concrete_shape(batch)
        dtype = NUMPY_DTYPES[tensor.dtype]
        if tensor.dtype in (DType.FLOAT32, DType.FLOAT16):
            feeds[tensor.name] = rng.standard_normal(shape).astype(dtype)
        elif tensor.dtype is DType.BOOL:
            feeds[tensor.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[tensor.name] = rng.integers(0, 16, shape).astype(dtype)
    return feeds


def stack(samples: list[Feeds], batch: int, offset: int = 0) -> Feeds:
    """A batch built from single samples, cycling when there are fewer samples than `batch`."""
    names = list(samples[0])
    picks = [samples[(offset + i) % len(samples)] for i in range(batch)]
    return {n: np.concatenate([p[n] for p in picks], axis=0) for n in names}


def split(feeds: Feeds) -> list[Feeds]:
    """Single-sample feeds from a batch (axis 0)."""
    count = next(iter(feeds.values())).shape[0]
    return [{n: v[i : i + 1] for n, v in feeds.items()} for i in range(count)]
