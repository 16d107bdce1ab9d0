"""Stage: quantize once to an explicit Q/DQ ONNX model from the calibration set.

Q/DQ (explicit quantization) is the format both ONNX Runtime and TensorRT build INT8 from;
symmetric signed INT8 for activations and weights is what TensorRT requires of Q/DQ nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
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


# What ONNX Runtime's own transformer recipe quantizes: the matrix products, where INT8 pays.
MATRIX_OPS = ("MatMul", "Gemm", "Conv")
NARROWED = (
    "INT8 in MatMul, Gemm and Conv only: an activation reaches infinity or float32's extreme "
    "on the calibration set (as an attention mask filled with -inf or finfo(float32).min, "
    "Hugging Face's, does) and no INT8 range can hold it, so only the matrix products around "
    "it are quantized, as ONNX Runtime's transformer recipe does"
)
# numpy's histogram, under the entropy and percentile calibrators, refuses an infinite range
# ("is not finite") and a finite one too wide for its bins, such as a mask's -3.4e38 ("Too
# many bins for data range").
_UNBINNABLE = ("is not finite", "Too many bins for data range")


def quantize_qdq(
    model: Path,
    out: Path,
    samples: Callable[[], Iterator[Feeds]],
    method: Method,
    percentile: float,
    step: Step,
) -> str | None:
    """Quantize every op ONNX Runtime quantizes; where an activation is infinite or at
    float32's extreme (no INT8 range can hold it), the matrix products only. Returns None, or
    NARROWED: what the Q/DQ model holds, for the stage's line. `samples` gives a fresh pass
    over the set each call."""
    prepared = out.with_suffix(".pre.onnx")
    # Shape inference + graph cleanup first, as ONNX Runtime's quantization guide advises.
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    try:
        try:
            _quantize(prepared, out, samples(), method, percentile, step, None)
            if not infinite_scales(out):
                return None
        except ValueError as exc:
            if not any(words in str(exc) for words in _UNBINNABLE):
                raise
        _quantize(prepared, out, samples(), method, percentile, step, MATRIX_OPS)
        return NARROWED
    finally:
        prepared.unlink(missing_ok=True)


# A scale this large maps a range beyond 1e36 onto 255 steps: an activation at float32's
# extreme (a mask's finfo.min), whose every other value rounds to zero.
_EXTREME_SCALE = 1e34


def infinite_scales(path: Path) -> list[str]:
    """Q/DQ scales that are not finite numbers, or that only float32's extreme explains.
    MinMax calibrates such an activation without complaint, to a scale whose answers are
    garbage."""
    graph = onnx.load(str(path), load_external_data=False).graph
    out = []
    for init in graph.initializer:
        if init.name.endswith("_scale"):
            scale = numpy_helper.to_array(init).astype(np.float64)
            if not np.all(np.isfinite(scale)) or np.any(np.abs(scale) > _EXTREME_SCALE):
                out.append(init.name)
    return out


class _RankOneWeights(logging.Filter):
    """Drops ONNX Runtime's "Axis 1 is out-of-range for weight … with rank 1", logged for every
    LayerNorm scale and bias of a transformer: per-channel quantization has no channel axis
    in a vector, so ONNX Runtime quantizes it per tensor, which is right. The warning says
    nothing a user could act on; a weight of another rank still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("is out-of-range for weight" in message and message.endswith("rank 1"))


def _quantize(
    model: Path,
    out: Path,
    samples: Iterator[Feeds],
    method: Method,
    percentile: float,
    step: Step,
    ops: tuple[str, ...] | None,
) -> None:
    quiet = _RankOneWeights()
    root = logging.getLogger()  # where ONNX Runtime's quantizer logs
    root.addFilter(quiet)
    try:
        quantize_static(
            str(model),
            str(out),
            _Reader(samples, step),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=_METHODS[method],
            op_types_to_quantize=list(ops) if ops else None,
            extra_options=calibration_options(method, percentile),
        )
    finally:
        root.removeFilter(quiet)
