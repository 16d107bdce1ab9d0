"""Stage: quantize once to an explicit Q/DQ ONNX model from the calibration set.

Q/DQ (explicit quantization) is the format both ONNX Runtime and TensorRT build INT8 from;
symmetric signed INT8 for activations and weights is what TensorRT requires of Q/DQ nodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from kiln.api.spec import CalibrationMethod as Method
from kiln.builder.progress import Step
from kiln.runtime.base import Feeds

_METHODS = {
    Method.ENTROPY: CalibrationMethod.Entropy,
    Method.MINMAX: CalibrationMethod.MinMax,
    Method.PERCENTILE: CalibrationMethod.Percentile,
}


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, samples: Iterator[Feeds], step: Step) -> None:
        self._samples = samples
        self._step = step

    def get_next(self) -> dict[str, Any] | None:
        sample = next(self._samples, None)
        if sample is not None:
            self._step.advance()
        return sample


def calibration_options(method: Method, percentile: float) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibPercentile": percentile,
    }
    if method is not Method.MINMAX:
        # Bounded memory: the histogram calibrators keep whole activations until they fold
        # them into their histograms; flushing every 32 samples keeps that small. Not for
        # MinMax: it keeps only per-tensor minima and maxima, and ONNX Runtime's MinMax
        # calibrator discards (instead of merging) what it collected at each flush
        # (microsoft/onnxruntime#18893): 512 samples ended in "No data is collected", 40 in a
        # range from the last 8.
        options["CalibMaxIntermediateOutputs"] = 32
    return options


def quantize_qdq(
    model: Path,
    out: Path,
    samples: Iterator[Feeds],
    method: Method,
    percentile: float,
    step: Step,
) -> None:
    prepared = out.with_suffix(".pre.onnx")
    # Shape inference + graph cleanup first, as ONNX Runtime's quantization guide advises.
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared),
            str(out),
            _Reader(samples, step),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=_METHODS[method],
            extra_options=calibration_options(method, percentile),
        )
    finally:
        prepared.unlink(missing_ok=True)
