from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kiln.api.spec import DType, TensorSpec
from kiln.serve.protocol import BadRequestError, InferRequest, decode, encode

INPUTS = [
    TensorSpec(name="image", shape=[-1, 2, 2]),
    TensorSpec(name="ids", shape=[-1, 3], dtype=DType.INT64),
]


def request(**override: Any) -> InferRequest:
    tensors: dict[str, dict[str, Any]] = {
        "image": {"name": "image", "shape": [2, 2, 2], "datatype": "FP32", "data": list(range(8))},
        "ids": {
            "name": "ids",
            "shape": [2, 3],
            "datatype": "INT64",
            "data": [[1, 2, 3], [4, 5, 6]],
        },
    }
    for name, change in override.items():
        if change is None:
            del tensors[name]
        else:
            tensors[name] = {**tensors[name], **change}
    return InferRequest.model_validate({"inputs": list(tensors.values())})


def test_decode_flat_and_nested_data() -> None:
    feeds = decode(request(), INPUTS, max_batch=8)
    assert feeds["image"].dtype == np.float32
    assert feeds["image"].shape == (2, 2, 2)
    assert feeds["ids"].tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"ids": None}, "missing input 'ids'; this model takes ['image', 'ids']"),
        ({"image": {"name": "img"}}, "unknown input(s) ['img']"),
        ({"image": {"datatype": "INT32"}}, "input 'image': datatype INT32, expected FP32"),
        ({"image": {"shape": [2, 3, 2]}}, "input 'image': shape [2, 3, 2], expected ['N', 2, 2]"),
        ({"image": {"shape": [2, 2]}}, "input 'image': shape [2, 2], expected ['N', 2, 2]"),
        ({"image": {"data": [1, 2]}}, "input 'image': 2 values for shape [2, 2, 2] (8 expected)"),
        ({"ids": {"shape": [1, 3], "data": [1, 2, 3]}}, "batch 1 differs from the other inputs' 2"),
        ({"image": {"data": ["x"] * 8}}, "input 'image': data is not FP32"),
    ],
)
def test_bad_requests_say_what_was_expected(override: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequestError) as info:
        decode(request(**override), INPUTS, max_batch=8)
    assert message in str(info.value)


def test_batch_above_the_engine_maximum_is_refused() -> None:
    with pytest.raises(BadRequestError, match=r"batch 2 exceeds .* built for \(1\)"):
        decode(request(), INPUTS, max_batch=1)


def test_encode_keeps_shape_and_type() -> None:
    tensor = encode("out", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert (tensor.shape, tensor.datatype, tensor.data) == ([2, 3], "FP32", [0, 1, 2, 3, 4, 5])


def test_output_metadata_marks_the_dimensions_that_follow_the_batch() -> None:
    from kiln.serve.protocol import output_metadata

    one: list[Any] = [
        np.zeros((1, 3, 8, 8), np.float32),
        np.zeros((1,), np.int64),
        np.zeros((5,), np.float32),
    ]
    two: list[Any] = [
        np.zeros((2, 3, 8, 8), np.float32),
        np.zeros((2,), np.int64),
        np.zeros((5,), np.float32),
    ]
    meta = output_metadata(["image", "label", "table"], one, two)
    assert meta == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "table", "datatype": "FP32", "shape": [5]},  # no batch axis at all
    ]
    assert output_metadata(["image"], one[:1], None)[0]["shape"] == [1, 3, 8, 8]
