from __future__ import annotations

import numpy as np

from kiln.api.spec import Accuracy, Precision, Tolerance
from kiln.builder.verify import blind_gates, compare, relative_error


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


def test_bf16_uses_its_own_looser_tolerance() -> None:
    ref = [[np.ones(4, np.float32)]]
    y = [[np.ones(4, np.float32) * 1.05]]  # a few bf16 steps off (its eps is 7.8e-3)
    assert not compare(y, ref, ["a"], Accuracy(), Precision.FP16).passed
    assert compare(y, ref, ["a"], Accuracy(), Precision.BF16).passed
    tight = Accuracy(bf16_atol=1e-3, bf16_rtol=1e-3)
    assert not compare(y, ref, ["a"], tight, Precision.BF16).passed
    assert (
        "a: |y-ref| <= 0.001 + 0.001*|ref|"
        in compare(y, ref, ["a"], tight, Precision.BF16).criterion
    )


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


def test_a_gate_below_its_atol_cannot_tell_engines_apart() -> None:
    tiny = [[np.full((2, 3), 3e-9, np.float32), np.full(2, 5.0, np.float32)]]
    zeros = [[np.zeros((2, 3), np.float32), np.zeros(2, np.float32)]]
    acc = Accuracy()
    # The very blindness warned about: an engine that outputs zeros passes output 'a'.
    assert compare(zeros, tiny, ["a", "b"], acc, Precision.FP32).outputs[0].passed
    warning = blind_gates(tiny, ["a", "b"], acc, {Precision.FP32})
    assert warning is not None
    assert "cannot tell engines apart" in warning
    assert "'a': every |ref| <= 3e-09, below fp32 atol 0.0001" in warning
    assert "'b'" not in warning  # its outputs are well above atol
    both = blind_gates(tiny, ["a", "b"], acc, {Precision.FP32, Precision.FP16})
    assert both is not None
    assert "below fp32 atol 0.0001 and fp16 atol 0.01" in both


def test_no_warning_where_the_gate_can_judge() -> None:
    ref = [[np.full(4, 0.5, np.float32)]]
    assert blind_gates(ref, ["a"], Accuracy(), {Precision.FP32, Precision.FP16}) is None
    # Outputs of 5e-3: the FP32 gate judges them, the FP16 gate's atol 1e-2 does not.
    small = [[np.full(4, 5e-3, np.float32)]]
    fp16 = blind_gates(small, ["a"], Accuracy(), {Precision.FP32, Precision.FP16})
    assert fp16 is not None
    assert "fp16 atol 0.01" in fp16
    assert "fp32" not in fp16
    # INT8's gate is relative: the outputs' scale does not blind it.
    assert blind_gates([[np.full(4, 1e-9)]], ["a"], Accuracy(), {Precision.INT8}) is None
    # A perOutput atol below the outputs' scale is the fix the warning suggests.
    tight = Accuracy(per_output={"a": Tolerance(atol=1e-12, fp16_atol=1e-12)})
    assert blind_gates([[np.full(4, 3e-9)]], ["a"], tight, {Precision.FP32}) is None
