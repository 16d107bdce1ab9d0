from __future__ import annotations

import numpy as np

from kiln.api.spec import Accuracy, Precision, Tolerance
from kiln.builder.verify import compare, relative_error


def test_fp32_is_elementwise_and_per_output() -> None:
    ref = [[np.ones((2, 3), np.float32), np.full((2,), 100.0, np.float32)]]
    near = [[ref[0][0] + 5e-5, ref[0][1] + 0.05]]
    acc = Accuracy()
    result = compare(near, ref, ["a", "b"], acc, Precision.FP32)
    assert result.passed  # 0.05 <= 1e-4 + 1e-3 * 100
    far = [[ref[0][0] + 5e-3, ref[0][1]]]
    failed = compare(far, ref, ["a", "b"], acc, Precision.FP32)
    assert not failed.passed
    assert [o.passed for o in failed.outputs] == [False, True]
    loose = Accuracy(per_output={"a": Tolerance(atol=1e-2)})
    assert compare(far, ref, ["a", "b"], loose, Precision.FP32).passed


def test_fp16_uses_its_own_tolerance() -> None:
    ref = [[np.ones(4, np.float32)]]
    y = [[np.ones(4, np.float32) * 1.005]]
    assert not compare(y, ref, ["a"], Accuracy(), Precision.FP32).passed
    assert compare(y, ref, ["a"], Accuracy(), Precision.FP16).passed


def test_int8_gate_is_relative_l2_error() -> None:
    rng = np.random.default_rng(0)
    ref = [[rng.standard_normal(1000).astype(np.float32)]]
    noisy = [[ref[0][0] + 0.03 * rng.standard_normal(1000).astype(np.float32)]]
    result = compare(noisy, ref, ["a"], Accuracy(int8_max_degradation=0.05), Precision.INT8)
    assert result.passed
    assert 0.02 < result.relative_error < 0.04
    assert not compare(
        noisy, ref, ["a"], Accuracy(int8_max_degradation=0.01), Precision.INT8
    ).passed
    assert (
        "relative L2 error <= 0.01"
        in compare(noisy, ref, ["a"], Accuracy(int8_max_degradation=0.01), Precision.INT8).criterion
    )


def test_shape_mismatch_fails() -> None:
    result = compare([[np.ones(3)]], [[np.ones(4)]], ["a"], Accuracy(), Precision.FP32)
    assert not result.passed
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
