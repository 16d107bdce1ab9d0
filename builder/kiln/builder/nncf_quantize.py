"""NNCF's post-training quantization, the one way Kiln calls it: for the Q/DQ ONNX model ONNX
Runtime and TensorRT build INT8 from, and for the OpenVINO IR's INT8.

Why NNCF for the Q/DQ model: on the lipsync example its model is 50x more accurate than ONNX
Runtime's `quantize_static` (relative error 4.3e-5 against 2.1e-3) and 1.12-1.17x faster in
ONNX Runtime (benchmarks/qdq_quantizers.py): it corrects the biases the rounding shifts, and
its default activation ranges (the mean of each sample's min and max) are not stretched by one
outlier. Symmetric (zero points 0) because TensorRT takes only that form of Q/DQ."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx

from kiln.api.spec import Calibration, CalibrationMethod
from kiln.builder.progress import Step
from kiln.builder.quantize import MATRIX_OPS, NARROWED, infinite_scales
from kiln.runtime.base import Feeds

# Ops whose presence makes NNCF's transformer scheme the right one: it keeps the attention's
# softmax path and layer norms in floating point, where INT8 hurts accuracy most, and so never
# quantizes the -inf of a padding mask.
_ATTENTION_OPS = frozenset({"Softmax"})


def _has_attention(op_types: Iterable[str]) -> bool:
    return any(op in _ATTENTION_OPS for op in op_types)


def nncf_options(cal: Calibration, attention: bool, symmetric: bool) -> dict[str, Any]:
    """`nncf.quantize`'s keyword arguments for this calibration: the transformer scheme where
    the graph has attention, symmetric activations where asked (TensorRT's Q/DQ), and the
    activation ranges `method` names (None: NNCF's own, the mean of each sample's min/max)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    options: dict[str, Any] = {}
    if attention:
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if symmetric:  # else NNCF's own preset: asymmetric activations for transformers
        options["preset"] = nncf.QuantizationPreset.PERFORMANCE
    ranges = _ranges(cal)
    if ranges is not None:
        options["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=ranges
        )
    return options


def _ranges(cal: Calibration) -> Any:
    from nncf.quantization.range_estimator import (
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    if cal.method is CalibrationMethod.MINMAX:  # the whole set's extremes, as ONNX Runtime's
        return RangeEstimatorParametersSet.MINMAX
    if cal.method is CalibrationMethod.PERCENTILE:
        # NNCF's quantile is per sample, averaged over the samples (ONNX Runtime's is one
        # histogram of the whole set): the same percentile, not the same number.
        bound = StatisticsCollectorParameters(
            statistics_type=StatisticsType.QUANTILE,
            aggregator_type=AggregatorType.MEAN,
            quantile_outlier_prob=1.0 - cal.percentile / 100.0,
        )
        return RangeEstimatorParameters(min=bound, max=bound)
    # ENTROPY never reaches NNCF (the spec refuses it); None: NNCF's defaults.
    return None


def ranges_label(cal: Calibration) -> str:
    """The activation ranges NNCF calibrates: entropy (ONNX Runtime's, chosen for the Q/DQ
    model) leaves the OpenVINO IR NNCF's own."""
    if cal.method is CalibrationMethod.MINMAX or cal.method is CalibrationMethod.PERCENTILE:
        return cal.method.value
    return "NNCF's default"


def _scheme(cal: Calibration, attention: bool, total: int) -> str:
    """What made the INT8 model, for the stage's line and the artifact's manifest."""
    name = "NNCF post-training, transformer scheme" if attention else "NNCF post-training"
    return f"{name}, {ranges_label(cal)} ranges, {total} samples"


class _Samples:
    """NNCF reads the dataset once per algorithm (statistics, then bias correction, and the
    transformer scheme's smoothing): each pass streams the set again rather than holding it,
    so memory holds one sample's activations. Progress counts the first pass."""

    def __init__(self, samples: Callable[[], Iterator[Feeds]], step: Step | None) -> None:
        self._samples, self._step = samples, step

    def __iter__(self) -> Iterator[Feeds]:
        step, self._step = self._step, None
        for sample in self._samples():
            if step is not None:
                step.advance()
            yield sample


def quantize_nncf(
    model: Any,
    samples: Callable[[], Iterator[Feeds]],
    cal: Calibration,
    total: int,
    step: Step | None,
    *,
    symmetric: bool,
    cpu: bool = False,
    ignored_types: Sequence[str] = (),
) -> tuple[Any, str]:
    """`model` (an ONNX ModelProto or an OpenVINO model) quantized on `total` samples, for
    OpenVINO's CPU plugin where `cpu`, else for any runtime; `ignored_types` stay float. With
    the scheme that made it (`_scheme`), for the stage's line and the artifact's manifest."""
    import nncf

    # Its progress bars go to the build log, its notes not. The logger's level only: NNCF's
    # own set_log_level also sets the level of every handler attached to its logger, which
    # may be another's (a test's log capture was silenced that way).
    logging.getLogger("nncf").setLevel(logging.ERROR)
    extra: dict[str, Any] = {}
    if ignored_types:
        extra["ignored_scope"] = nncf.IgnoredScope(types=list(ignored_types), validate=False)
    attention = _has_attention(_op_types(model))
    quantized = nncf.quantize(
        model,
        nncf.Dataset(_Samples(samples, step)),
        subset_size=total,
        target_device=nncf.TargetDevice.CPU if cpu else nncf.TargetDevice.ANY,
        **nncf_options(cal, attention, symmetric),
        **extra,
    )
    return quantized, _scheme(cal, attention, total)


def _op_types(model: Any) -> set[str]:
    if isinstance(model, onnx.ModelProto):
        return {node.op_type for node in model.graph.node}
    return {op.get_type_name() for op in model.get_ordered_ops()}


def quantize_qdq_nncf(
    source: Path,
    out: Path,
    samples: Callable[[], Iterator[Feeds]],
    cal: Calibration,
    total: int,
    step: Step,
) -> str:
    """The symmetric Q/DQ model ONNX Runtime and TensorRT build from. Where an activation is
    infinite or at float32's extreme outside an attention (the transformer scheme never
    quantizes a mask), NNCF calibrates it to an infinite scale: then only the matrix products
    are quantized, as with ONNX Runtime's quantizer. Returns what the model holds."""
    model = onnx.load(str(source))
    others = sorted(_op_types(model) - set(MATRIX_OPS))
    quantized, label = quantize_nncf(model, samples, cal, total, step, symmetric=True)
    onnx.save(quantized, str(out))
    if not infinite_scales(out):
        return label
    narrowed, _ = quantize_nncf(
        onnx.load(str(source)), samples, cal, total, None, symmetric=True, ignored_types=others
    )
    onnx.save(narrowed, str(out))
    return f"{label}; {NARROWED}"
