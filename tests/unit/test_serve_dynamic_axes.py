"""The server with dynamic axes beyond the batch axis: what requests it accepts, which ones
share a batch, and the output metadata its warm-up measures."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from kiln.api.spec import DType, OptimizedModelSpec, TensorSpec, length_conflict
from kiln.runtime.base import Array, Feeds
from kiln.serve.batching import Batcher
from kiln.serve.protocol import (
    BadRequestError,
    InferRequest,
    decode,
    output_metadata,
    warm_up_points,
)
from tests.fixtures.specs import minimal_spec

SEQ = {"axis": 1, "name": "seq", "min": 8, "opt": 64, "max": 128}
TEXT = [
    TensorSpec.model_validate(
        {"name": "input_ids", "shape": [-1, -1], "dtype": DType.INT64, "dynamic": [SEQ]}
    ),
    TensorSpec.model_validate(
        {"name": "attention_mask", "shape": [-1, -1], "dtype": DType.INT64, "dynamic": [SEQ]}
    ),
]


def text_request(ids: int, mask: int | None = None, batch: int = 1) -> InferRequest:
    """A request with `ids` tokens per sample, and a mask of `mask` (default the same)."""

    def tensor(name: str, length: int) -> dict[str, Any]:
        shape = [batch, length]
        return {"name": name, "shape": shape, "datatype": "INT64", "data": [1] * batch * length}

    tensors = [tensor("input_ids", ids), tensor("attention_mask", ids if mask is None else mask)]
    return InferRequest.model_validate({"inputs": tensors})


def model_spec(inputs: list[dict[str, Any]], batch_sizes: list[int]) -> OptimizedModelSpec:
    return minimal_spec(inputs=inputs, batchSizes=batch_sizes)


# decode


@pytest.mark.parametrize("length", [8, 9, 64, 127, 128])
def test_decode_accepts_any_length_in_range(length: int) -> None:
    feeds = decode(text_request(length, batch=2), TEXT, max_batch=4)
    assert feeds["input_ids"].shape == (2, length)
    assert feeds["attention_mask"].shape == (2, length)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (7, "input 'input_ids': shape [1, 7]: axis 1 (seq) is 7, outside [8, 128]"),
        (129, "input 'input_ids': shape [1, 129]: axis 1 (seq) is 129, outside [8, 128]"),
    ],
)
def test_decode_refuses_a_length_out_of_range(ids: int, message: str) -> None:
    with pytest.raises(BadRequestError) as info:
        decode(text_request(ids), TEXT, max_batch=4)
    assert str(info.value) == message


def test_decode_refuses_a_wrong_rank_showing_the_range() -> None:
    request = InferRequest.model_validate(
        {
            "inputs": [
                {"name": "input_ids", "shape": [1, 8, 1], "datatype": "INT64", "data": [0] * 8},
                {"name": "attention_mask", "shape": [1, 8], "datatype": "INT64", "data": [1] * 8},
            ]
        }
    )
    with pytest.raises(BadRequestError) as info:
        decode(request, TEXT, max_batch=4)
    assert str(info.value) == "input 'input_ids': shape [1, 8, 1], expected ['N', '8..128']"


def test_decode_refuses_inputs_that_disagree_on_a_shared_length() -> None:
    with pytest.raises(BadRequestError) as info:
        decode(text_request(16, mask=17), TEXT, max_batch=4)
    assert str(info.value) == (
        "inputs: 'seq' is 16 in 'input_ids' but 17 in 'attention_mask'; they share one length"
    )


def test_axes_with_their_own_names_may_differ() -> None:
    unnamed = {k: v for k, v in SEQ.items() if k != "name"}  # input_ids_1, attention_mask_1
    inputs = [
        TensorSpec.model_validate({**t.model_dump(exclude_none=True), "dynamic": [unnamed]})
        for t in TEXT
    ]
    feeds = decode(text_request(16, mask=17), inputs, max_batch=4)
    assert (feeds["input_ids"].shape, feeds["attention_mask"].shape) == ((1, 16), (1, 17))


def test_static_models_are_checked_as_before() -> None:
    inputs = [TensorSpec(name="image", shape=[-1, 2, 2])]
    good = {"name": "image", "shape": [1, 2, 2], "datatype": "FP32", "data": [0.0] * 4}
    assert decode(InferRequest.model_validate({"inputs": [good]}), inputs, 1)["image"].shape == (
        1,
        2,
        2,
    )
    bad = InferRequest.model_validate({"inputs": [{**good, "shape": [1, 4], "data": [0.0] * 4}]})
    with pytest.raises(BadRequestError) as info:
        decode(bad, inputs, max_batch=1)
    assert str(info.value) == "input 'image': shape [1, 4], expected ['N', 2, 2]"
    assert length_conflict(inputs, {"image": (1, 2, 2)}) is None


def test_the_spec_method_and_the_function_are_one_rule() -> None:
    spec = model_spec([t.model_dump(exclude_none=True) for t in TEXT], [1, 4])
    shapes = {"input_ids": (1, 16), "attention_mask": (1, 17)}
    assert spec.length_conflict(shapes) == length_conflict(TEXT, shapes) is not None
    assert spec.length_conflict({"input_ids": (1, 16), "attention_mask": (2, 16)}) is None


# Batcher


def test_only_requests_of_one_shape_share_a_batch_and_order_is_kept() -> None:
    batches: list[tuple[int, int]] = []  # (batch, length) of each batch the engine ran
    release = threading.Event()

    # A stand-in for the engine: per-sample outputs, one following the length and one not,
    # so a wrong split or a mixed-up request would show in the answers.
    def infer(feeds: Feeds) -> list[Array]:
        x = feeds["x"]
        batches.append((int(x.shape[0]), int(x.shape[1])))
        release.wait(5)  # the first batch holds the engine while the others queue
        return [x * 2, x.sum(axis=1)]

    lengths = [8, 8, 8, 16, 16, 8, 8, 8, 8]  # the first runs alone; the rest queue behind it

    async def scenario() -> list[list[Array]]:
        batcher = Batcher(infer, max_batch=3, window_s=0.0)
        batcher.start()

        def submit(i: int) -> asyncio.Future[list[Array]]:
            feeds = {"x": np.full((1, lengths[i]), i, np.float32)}
            return asyncio.ensure_future(batcher.submit(feeds))

        first = submit(0)
        while not batches:
            await asyncio.sleep(0.001)
        rest = [submit(i) for i in range(1, len(lengths))]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    # 8 | 8 8 | 16 16 | 8 8 8 | 8: a new shape closes the batch, a full batch too, and the
    # 8s after the 16s do not jump ahead to join the 8s before them.
    assert batches == [(1, 8), (2, 8), (2, 16), (3, 8), (1, 8)]
    for i, (doubled, summed) in enumerate(answers):
        assert doubled.tolist() == [[2.0 * i] * lengths[i]]
        assert summed.tolist() == [float(i * lengths[i])]


def test_a_window_does_not_mix_shapes() -> None:
    batches: list[tuple[int, ...]] = []

    def infer(feeds: Feeds) -> list[Array]:  # a stand-in for the engine
        batches.append(tuple(feeds["x"].shape))
        return [feeds["x"]]

    async def scenario() -> None:
        batcher = Batcher(infer, max_batch=8, window_s=0.05)
        batcher.start()
        shapes = [(1, 8), (2, 8), (1, 16), (1, 8)]
        await asyncio.gather(*(batcher.submit({"x": np.zeros(s, np.float32)}) for s in shapes))
        await batcher.stop()

    asyncio.run(scenario())
    assert batches == [(3, 8), (1, 16), (1, 8)]


# Output metadata


def test_warm_up_varies_the_batch_and_every_length() -> None:
    image = {"name": "image", "shape": [-1, 3]}
    text = [t.model_dump(exclude_none=True) for t in TEXT]
    assert warm_up_points(model_spec([image], [1])) == [(1, {})]
    assert warm_up_points(model_spec([image], [1, 4])) == [(1, {}), (2, {})]
    assert warm_up_points(model_spec(text, [1, 4])) == [(1, {"seq": 64}), (2, {"seq": 8})]
    # A batch fixed by the engine: only the length varies.
    assert warm_up_points(model_spec(text, [1])) == [(1, {"seq": 64}), (1, {"seq": 8})]
    # opt at min: the other length is the max.
    at_min = [{**t, "dynamic": [{**SEQ, "opt": 8}]} for t in text]
    assert warm_up_points(model_spec(at_min, [1, 4]))[1] == (2, {"seq": 128})


def test_output_metadata_marks_an_output_axis_that_follows_a_length() -> None:
    spec = model_spec([t.model_dump(exclude_none=True) for t in TEXT], [1, 4])

    # A stand-in for a text encoder's answers at each warm-up point: per-token states, a
    # pooled vector, and a table that depends on neither batch nor length.
    def answers(batch: int, lengths: dict[str, int]) -> list[Array]:
        shapes = [(batch, lengths["seq"], 4), (batch, 4), (5,)]
        return [np.zeros(s, np.float32) for s in shapes]

    at_one, at_two = (answers(*point) for point in warm_up_points(spec))
    assert [m["shape"] for m in output_metadata(["states", "pooled", "table"], at_one, at_two)] == [
        [-1, -1, 4],
        [-1, 4],
        [5],
    ]
