"""Calibration memory is bounded by a chunk of samples, not the sample count: how the chunks
are sized from one sample's activations, and how the reader hands them to ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from kiln.builder.quantize import (
    ACTIVATION_BUDGET,
    MAX_CHUNK,
    _Reader,
    activation_bytes,
    chunk_size,
)


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def advance(self, n: int = 1) -> None:
        self.count += n


def test_chunks_spread_every_sample_over_non_empty_chunks() -> None:
    samples = iter([{"x": np.full((1,), i)} for i in range(10)])
    reader = _Reader(samples, _Counter(), total=10, chunk=4)
    assert len(reader) == 12  # rounded up to a multiple of the chunk: 3 chunks
    seen: list[list[int]] = []
    for start in range(0, len(reader), 4):
        reader.set_range(start_index=start, end_index=start + 4)
        chunk = []
        while (sample := reader.get_next()) is not None:
            chunk.append(int(sample["x"][0]))
        seen.append(chunk)
    assert seen == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_chunk_size_follows_the_activation_bytes_of_one_sample() -> None:
    assert chunk_size(None) == 1
    assert chunk_size(1) == MAX_CHUNK
    assert chunk_size(ACTIVATION_BUDGET // 3) == 3
    assert chunk_size(3 * ACTIVATION_BUDGET) == 1  # one Whisper-sized sample: alone


def test_activation_bytes_come_from_shape_inference_at_the_samples_shape() -> None:
    # x [N, 1000] -> Relu -> Mul(2) -> y: two float activations of N x 1000 each.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1000])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1000])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "two"], ["y"])],
        "g",
        [x],
        [y],
        [two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    assert activation_bytes(model, {"x": np.zeros((3, 1000), np.float32)}) == 2 * 3 * 1000 * 4
