"""Stage: check a candidate's outputs against the PyTorch FP32 reference (pure)."""

from __future__ import annotations

import numpy as np

from kiln.api.spec import Accuracy, Precision
from kiln.api.status import AccuracyResult, OutputError
from kiln.runtime.base import Array


def relative_error(y: Array, ref: Array) -> float:
    ref64 = ref.astype(np.float64)
    denom = float(np.linalg.norm(ref64))
    diff = float(np.linalg.norm(y.astype(np.float64) - ref64))
    return diff / denom if denom > 0 else diff


def compare(
    outputs: list[list[Array]],
    references: list[list[Array]],
    names: list[str],
    accuracy: Accuracy,
    precision: Precision,
) -> AccuracyResult:
    """`outputs[s][o]` is sample s, output o. FP32/FP16 candidates must be element-wise close
    (|y - ref| <= atol + rtol * |ref|); INT8 ones are judged on relative L2 error, since
    element-wise closeness is not a meaningful bar for quantized outputs."""
    per_output: list[OutputError] = []
    for index, name in enumerate(names):
        y = np.concatenate([sample[index].reshape(-1) for sample in outputs]).astype(np.float64)
        ref = np.concatenate([sample[index].reshape(-1) for sample in references]).astype(
            np.float64
        )
        if y.shape != ref.shape:
            per_output.append(
                OutputError(
                    name=name, max_abs_error=float("inf"), relative_error=float("inf"), passed=False
                )
            )
            continue
        max_abs = float(np.max(np.abs(y - ref))) if y.size else 0.0
        rel = relative_error(y, ref)
        tol = accuracy.tolerance(name)
        if precision is Precision.INT8:
            passed = rel <= accuracy.int8_max_degradation
        else:
            atol, rtol = tol.elementwise(precision)
            passed = bool(np.all(np.abs(y - ref) <= atol + rtol * np.abs(ref)))
        per_output.append(
            OutputError(name=name, max_abs_error=max_abs, relative_error=rel, passed=passed)
        )
    return AccuracyResult(
        passed=all(o.passed for o in per_output),
        criterion=criterion(accuracy, precision, names),
        samples=len(outputs),
        max_abs_error=max(o.max_abs_error for o in per_output),
        relative_error=max(o.relative_error for o in per_output),
        outputs=per_output,
    )


def criterion(accuracy: Accuracy, precision: Precision, names: list[str]) -> str:
    if precision is Precision.INT8:
        return f"relative L2 error <= {accuracy.int8_max_degradation:g}"
    parts = []
    for name in names:
        tol = accuracy.tolerance(name)
        atol, rtol = tol.elementwise(precision)
        parts.append(f"{name}: |y-ref| <= {atol:g} + {rtol:g}*|ref|")
    return "; ".join(parts)


def blind_gates(
    references: list[list[Array]],
    names: list[str],
    accuracy: Accuracy,
    precisions: set[Precision],
) -> str | None:
    """Why an element-wise gate cannot tell engines apart, or None. Where every reference
    value of an output is below a gate's atol, an engine that outputs zeros passes it
    (|0 - ref| < atol): outputs around 1e-9 pass anything under the default atol 1e-4. The
    INT8 gate is relative (|y-ref|/|ref|), so the scale of the outputs does not blind it."""
    problems = []
    for index, name in enumerate(names):
        peak = max(
            (float(np.max(np.abs(s[index]))) for s in references if s[index].size), default=0.0
        )
        tol = accuracy.tolerance(name)
        blind = [
            f"{precision.value} atol {tol.elementwise(precision)[0]:g}"
            for precision in (Precision.FP32, Precision.FP16, Precision.BF16)
            if precision in precisions and peak < tol.elementwise(precision)[0]
        ]
        if blind:
            problems.append(f"{name!r}: every |ref| <= {peak:.3g}, below {' and '.join(blind)}")
    if not problems:
        return None
    return (
        "the gate cannot tell engines apart (an all-zero output would pass): "
        + "; ".join(problems)
        + "; set accuracy.atol/fp16Atol/bf16Atol (or perOutput) below the outputs' scale"
    )
