"""INT8 calibration is correct on any sample count: the Q/DQ scales calibrated sample by
sample equal those calibrated from the same data in one pass, for every method, including
counts that cross the calibrators' flush every 32 samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.api.spec import CalibrationMethod
from kiln.builder.quantize import quantize_qdq
from kiln.runtime.base import Feeds

pytestmark = pytest.mark.integration


class _Quiet:
    def advance(self, amount: int = 1) -> None:
        pass


def tiny_onnx(path: Path) -> None:
    """x [N, 8] -> MatMul -> Relu -> MatMul -> y [N, 4]: activations to calibrate."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def scales(model: Path) -> dict[str, float]:
    graph = onnx.load(str(model)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {
        n.input[0]: float(values[n.input[1]].reshape(-1)[0])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in values
    }


@pytest.mark.parametrize("method", list(CalibrationMethod))
@pytest.mark.parametrize("count", [40, 512])
def test_scales_do_not_depend_on_how_the_samples_arrive(
    tmp_path: Path, method: CalibrationMethod, count: int
) -> None:
    source = tmp_path / "m.onnx"
    tiny_onnx(source)
    data = np.random.default_rng(1).standard_normal((count, 8)).astype(np.float32)
    # A wide outlier early on: a calibrator that forgets earlier samples misses it.
    data[3] *= 25

    def one_by_one() -> Iterator[Feeds]:
        return iter({"x": data[i : i + 1]} for i in range(count))

    quantize_qdq(source, tmp_path / "a.onnx", one_by_one(), method, 99.99, _Quiet())
    quantize_qdq(source, tmp_path / "b.onnx", iter([{"x": data}]), method, 99.99, _Quiet())
    sample_by_sample, one_pass = scales(tmp_path / "a.onnx"), scales(tmp_path / "b.onnx")
    assert set(sample_by_sample) == set(one_pass)
    assert one_pass
    for name, scale in one_pass.items():
        if method is CalibrationMethod.MINMAX:
            assert sample_by_sample[name] == pytest.approx(scale, rel=1e-6), name
        else:  # histograms are built in steps either way: equal within their resolution
            assert sample_by_sample[name] == pytest.approx(scale, rel=0.1), name
