"""Inputs as models have them: a batch axis per input (`batchAxis`), inputs with none, and
scalars (shape []). Spec rules, feeds, shards, request decoding and the batcher."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.builder.calibration import check_shard
from kiln.builder.feeds import batch_count, random_feeds, split, stack, take
from kiln.serve.batching import Batcher
from kiln.serve.protocol import BadRequestError, InferRequest, decode
from tests.fixtures.specs import minimal_spec

# silero-vad's shipped ONNX file: audio, a recurrent state batched on axis 1, a sample rate.
VAD_INPUTS: list[dict[str, Any]] = [
    {"name": "input", "shape": [-1, 576]},
    {"name": "state", "shape": [2, -1, 128], "batchAxis": 1},
    {"name": "sr", "shape": [], "dtype": "int64", "range": [16000, 16000]},
]


def vad_spec(**over: Any) -> Any:
    return minimal_spec(inputs=VAD_INPUTS, outputs=["output", "stateN"], **over)


def test_batch_axis_defaults_to_0_and_a_scalar_has_none() -> None:
    spec = vad_spec()
    audio, state, rate = spec.inputs
    assert (audio.batch_axis, state.batch_axis, rate.batch_axis) == (0, 1, None)
    assert state.concrete_shape(3) == (2, 3, 128)
    assert rate.concrete_shape(3) == ()
    assert state.wanted() == [2, "N", 128]
    assert state.mismatch([2, 5, 128]) is None
    assert state.mismatch([3, 5, 128]) == "shape [3, 5, 128], expected [2, 'N', 128]"
    assert rate.mismatch([]) is None
    assert rate.mismatch([1]) is not None
    assert spec.batch_varies
    assert not spec.merges_requests


def test_an_explicit_null_batch_axis_survives_the_round_trip() -> None:
    spec = minimal_spec(
        inputs=[{"name": "x", "shape": [1, 576], "batchAxis": None}], batchSizes=[1]
    )
    assert spec.inputs[0].batch_axis is None
    again = type(spec).model_validate(spec.model_dump(by_alias=True))
    assert again.inputs[0].batch_axis is None
    assert not again.batch_varies


@pytest.mark.parametrize(
    ("inputs", "batches", "expected"),
    [
        # The state's axis 0 is fixed at 2: the old advice (make it -1) was wrong for it.
        (
            [{"name": "s", "shape": [2, -1, 128]}],
            [1, 4],
            "spec.inputs[0].shape: axis 1 is -1 but has no range; add dynamic: [{axis: 1, min: "
            "…, max: …}], or batchAxis: 1 if it is the batch axis",
        ),
        (
            [{"name": "s", "shape": [2, 4]}],
            [1, 4],
            "spec.inputs[0].shape: axis 0 is fixed at 2 (the batch axis) but batchSizes is "
            "[1, 4]; use -1 for a dynamic batch axis, or batchAxis",
        ),
        ([{"name": "s", "shape": [], "batchAxis": 0}], [1], "batchAxis: 0 is not an axis"),
        (
            [{"name": "s", "shape": [-1, -1], "dynamic": [{"axis": 0, "min": 1, "max": 9}]}],
            [1],
            "dynamic[0].axis: 0 is the batch axis",
        ),
        (
            [{"name": "s", "shape": [-1, 4], "batchAxis": None}],
            [1],
            "spec.inputs[0].shape: axis 0 is -1 but has no range; add dynamic: [{axis: 0, min: …, "
            "max: …}], or batchAxis: 0 if it is the batch axis (this input has none",
        ),
        (
            [{"name": "s", "shape": [1, 4], "batchAxis": None}],
            [1, 2],
            "batchSizes: [1, 2], but no input has a batch axis",
        ),
    ],
)
def test_bad_batch_axes_name_the_field(
    inputs: list[dict[str, Any]], batches: list[int], expected: str
) -> None:
    with pytest.raises(InvalidSpecError) as info:
        minimal_spec(inputs=inputs, batchSizes=batches)
    assert expected in str(info.value)


def test_a_fully_fixed_model_runs_at_its_one_shape() -> None:
    fixed = [
        {"name": "input", "shape": [1, 576]},
        {"name": "state", "shape": [2, 1, 128], "batchAxis": 1},
        {"name": "sr", "shape": [], "dtype": "int64"},
    ]
    spec = minimal_spec(inputs=fixed, outputs=["output", "stateN"], batchSizes=[1])
    assert not spec.batch_varies
    assert [t.concrete_shape(7) for t in spec.inputs] == [(1, 576), (2, 1, 128), ()]


def test_feeds_stack_and_split_along_each_inputs_batch_axis() -> None:
    spec = vad_spec()
    feeds = random_feeds(spec.inputs, 3, seed=0)
    assert feeds["state"].shape == (2, 3, 128)
    assert feeds["sr"].shape == ()
    assert int(feeds["sr"]) == 16000
    assert batch_count(feeds, spec.inputs) == 3
    parts = split(feeds, spec.inputs)
    assert [p["state"].shape for p in parts] == [(2, 1, 128)] * 3
    np.testing.assert_array_equal(parts[2]["state"][:, 0], feeds["state"][:, 2])
    again = stack(parts, spec.inputs, 3)
    for name in ("input", "state", "sr"):
        np.testing.assert_array_equal(again[name], feeds[name])
    assert take(feeds, spec.inputs[:2], 1)["state"].shape == (2, 1, 128)


def _shard(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_a_shard_holds_samples_on_the_batch_axis(tmp_path: Path) -> None:
    spec = vad_spec()
    good = _shard(
        tmp_path / "good.npz",
        input=np.zeros((5, 576), np.float32),
        state=np.zeros((2, 5, 128), np.float32),
        sr=np.full((5,), 16000, np.int64),  # no batch axis: samples on a new axis 0
    )
    assert check_shard(good, "cal", spec) == 5
    bad = _shard(
        tmp_path / "bad.npz",
        input=np.zeros((5, 576), np.float32),
        state=np.zeros((5, 2, 128), np.float32),
        sr=np.full((5,), 16000, np.int64),
    )
    wanted = r"'state' has shape \[5, 2, 128\], expected \[2, 'N', 128\]"
    with pytest.raises(KilnInputError, match=wanted):
        check_shard(bad, "cal", spec)


def _request(**tensors: tuple[list[int], str, list[Any]]) -> InferRequest:
    return InferRequest.model_validate(
        {
            "inputs": [
                {"name": n, "shape": shape, "datatype": dt, "data": data}
                for n, (shape, dt, data) in tensors.items()
            ]
        }
    )


def test_requests_name_the_batch_on_each_inputs_own_axis() -> None:
    spec = vad_spec()
    ok = _request(
        input=([2, 576], "FP32", [0.0] * 1152),
        state=([2, 2, 128], "FP32", [0.0] * 512),
        sr=([], "INT64", [16000]),
    )
    feeds = decode(ok, spec.inputs, 4)
    assert feeds["sr"].shape == ()
    assert feeds["state"].shape == (2, 2, 128)
    wrong = _request(
        input=([2, 576], "FP32", [0.0] * 1152),
        state=([2, 3, 128], "FP32", [0.0] * 768),
        sr=([], "INT64", [16000]),
    )
    wanted = r"'state': batch 3 differs .* \(its batch axis is axis 1\)"
    with pytest.raises(BadRequestError, match=wanted):
        decode(wrong, spec.inputs, 4)


def test_requests_run_alone_where_they_cannot_merge_on_axis_0() -> None:
    sizes: list[int] = []

    def infer(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        sizes.append(int(feeds["state"].shape[1]))
        return [feeds["state"].sum(axis=(0, 2))]

    async def main() -> list[list[np.ndarray]]:
        batcher = Batcher(infer, max_batch=8, window_s=0.05, merges=False)
        batcher.start()
        try:
            requests = [{"state": np.full((2, 1, 3), i, np.float32)} for i in range(4)]
            return await asyncio.gather(*(batcher.submit(r, 1) for r in requests))
        finally:
            await batcher.stop()

    answers = asyncio.run(main())
    assert sizes == [1, 1, 1, 1]
    assert [float(a[0][0]) for a in answers] == [0.0, 6.0, 12.0, 18.0]
