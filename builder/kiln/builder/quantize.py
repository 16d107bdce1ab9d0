"""Stage: quantize once to an explicit Q/DQ ONNX model from the calibration set.

Q/DQ (explicit quantization) is the format both ONNX Runtime and TensorRT build INT8 from;
symmetric signed INT8 for activations and weights is what TensorRT requires of Q/DQ nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    """The samples in chunks of at most `chunk`. ONNX Runtime's `CalibStridedMinMax` loop
    (which, despite its name, serves every calibrator) calls `set_range` and then
    `collect_data` once per chunk: a histogram calibrator folds each chunk into its
    histograms and lets the activations go, MinMax merges each chunk's ranges. So memory
    holds one chunk's activations, not the whole set's. The loop needs a length divisible by
    the chunk: it is rounded up, and the real samples are spread over the chunks so none is
    empty (an empty chunk is "No data is collected")."""

    def __init__(self, samples: Iterator[Feeds], step: Step, total: int, chunk: int) -> None:
        self._samples = samples
        self._step = step
        self._total = total
        self._chunk = chunk
        self._chunks = -(-total // chunk)
        self._left = total  # without set_range (no strides): the whole set at once

    def __len__(self) -> int:
        return self._chunks * self._chunk

    def set_range(self, start_index: int, end_index: int) -> None:
        index = start_index // self._chunk
        low, high = (index * self._total // self._chunks, (index + 1) * self._total // self._chunks)
        self._left = high - low

    def get_next(self) -> dict[str, Any] | None:
        if self._left <= 0:
            return None
        sample = next(self._samples, None)
        if sample is not None:
            self._left -= 1
            self._step.advance()
        return sample


# What one chunk's activations may take: the histogram calibrators keep every float
# activation of every sample in a chunk (a Whisper-sized encoder's are 1.5 GiB a sample).
ACTIVATION_BUDGET = 512 << 20
MAX_CHUNK = 64  # beyond this, larger chunks save no time
_BYTES = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8}


def activation_bytes(model: onnx.ModelProto, sample: Feeds) -> int | None:
    """The bytes of the float activations one sample makes, from ONNX shape inference at the
    sample's shapes; a tensor whose shape stays unknown counts as the largest known one.
    None where shape inference fails."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        if value.name in sample:
            dims = value.type.tensor_type.shape.dim
            for dim, length in zip(dims, sample[value.name].shape, strict=False):
                dim.Clear()
                dim.dim_value = int(length)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:  # an op shape inference does not know: the caller is conservative
        return None
    known: list[int] = []
    unknown = 0
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type not in _BYTES:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if any(d < 0 for d in dims):
            unknown += 1
        else:
            known.append(int(np.prod(dims, dtype=np.int64)) * _BYTES[tensor.elem_type])
    return sum(known) + unknown * max(known, default=0)


def chunk_size(per_sample: int | None) -> int:
    """Samples per calibration chunk: as many as fit ACTIVATION_BUDGET, 1 to MAX_CHUNK; 1
    where the size is unknown (slower, never out of memory)."""
    if per_sample is None:
        return 1
    return max(1, min(MAX_CHUNK, ACTIVATION_BUDGET // max(per_sample, 1)))


def calibration_options(method: Method, percentile: float, chunk: int) -> dict[str, Any]:
    # No CalibMaxIntermediateOutputs: the histogram calibrators of ONNX Runtime 1.32 ignore
    # it, and its MinMax calibrator discards what it collected at each flush
    # (microsoft/onnxruntime#18893). Memory is bounded by the chunks instead (`_Reader`).
    return {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "CalibPercentile": percentile,
        "CalibStridedMinMax": chunk,
    }


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
    first = next(samples())
    per_sample = activation_bytes(onnx.load(str(prepared)), first)
    plan = _Plan(sum(1 for _ in samples()), chunk_size(per_sample), method, percentile)
    try:
        try:
            _quantize(prepared, out, samples(), plan, step, None)
            if not infinite_scales(out):
                return None
        except ValueError as exc:
            if not any(words in str(exc) for words in _UNBINNABLE):
                raise
        _quantize(prepared, out, samples(), plan, step, MATRIX_OPS)
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
    # A scale is a Q/DQ node's second input, whatever the quantizer named it.
    names = {n.input[1] for n in graph.node if n.op_type in _QDQ_OPS and len(n.input) > 1}
    out = []
    for init in graph.initializer:
        if init.name in names:
            scale = numpy_helper.to_array(init).astype(np.float64)
            if not np.all(np.isfinite(scale)) or np.any(np.abs(scale) > _EXTREME_SCALE):
                out.append(init.name)
    return out


_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class _RankOneWeights(logging.Filter):
    """Drops ONNX Runtime's "Axis 1 is out-of-range for weight … with rank 1", logged for every
    LayerNorm scale and bias of a transformer: per-channel quantization has no channel axis
    in a vector, so ONNX Runtime quantizes it per tensor, which is right. The warning says
    nothing a user could act on; a weight of another rank still warns."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("is out-of-range for weight" in message and message.endswith("rank 1"))


@dataclass(frozen=True)
class _Plan:
    total: int  # samples calibrated on
    chunk: int  # samples whose activations are held at once
    method: Method
    percentile: float


def _quantize(
    model: Path,
    out: Path,
    samples: Iterator[Feeds],
    plan: _Plan,
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
            _Reader(samples, step, plan.total, plan.chunk),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=_METHODS[plan.method],
            op_types_to_quantize=list(ops) if ops else None,
            extra_options=calibration_options(plan.method, plan.percentile, plan.chunk),
        )
    finally:
        root.removeFilter(quiet)
