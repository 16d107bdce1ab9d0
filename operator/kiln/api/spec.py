"""The OptimizedModel spec: what a user `kubectl apply`s, and what `kiln optimize` reads.

Every cross-field rule lives here, so a bad spec fails at load time with the field's path,
before any model is fetched or any Job is created.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from kiln.api.base import KilnModel

API_GROUP = "kiln.dev"
API_VERSION = "v1alpha1"
KIND = "OptimizedModel"
PLURAL = "optimizedmodels"

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")
_DIM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _identifier(value: str, what: str) -> str:
    """`value` if it is a name a tensor or argument may have (ONNX, the v2 protocol)."""
    if not _NAME.match(value):
        raise ValueError(f"expected an identifier-like {what} name, got {value!r}")
    return value


class SourceFormat(StrEnum):
    TORCHSCRIPT = "torchscript"  # torch.jit.save archive
    EXPORTED = "exported"  # torch.export.save program (.pt2)
    ONNX = "onnx"  # used as-is; PyTorch candidates are skipped
    FACTORY = "factory"  # `module:function` building an nn.Module, plus a state_dict file


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT64 = "int64"
    INT32 = "int32"
    UINT8 = "uint8"
    BOOL = "bool"


class Backend(StrEnum):
    PYTORCH = "pytorch"  # eager: always measured, it is the baseline
    TORCH_COMPILE = "torch-compile"  # a measured reference: what a user might pick instead
    AOTINDUCTOR = "aotinductor"  # torch.compile ahead of time: a package per device type
    ONNXRUNTIME = "onnxruntime"
    OPENVINO = "openvino"  # CPU targets: Intel's runtime, with NNCF's INT8
    TENSORRT = "tensorrt"


# torch-compile is opt-in: AOTInductor is its deployable form and measured the same.
DEFAULT_BACKENDS: tuple[Backend, ...] = tuple(b for b in Backend if b is not Backend.TORCH_COMPILE)


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    # bfloat16: float32's range with 7 stored mantissa bits; no overflow where FP16 overflows, and
    # fast where the hardware has it (AVX512-BF16 and AMX CPUs, NVIDIA from Ampere on).
    BF16 = "bf16"
    INT8 = "int8"


class CalibrationMethod(StrEnum):
    ENTROPY = "entropy"  # KL divergence of histograms: ONNX Runtime's calibrator only
    MINMAX = "minmax"
    PERCENTILE = "percentile"


class Quantizer(StrEnum):
    """What makes the one Q/DQ INT8 model ONNX Runtime and TensorRT build from."""

    # NNCF's post-training quantization: symmetric, with bias correction. On the lipsync
    # example 50x more accurate than ONNX Runtime's (4.3e-5 against 2.1e-3 relative error)
    # and 1.12-1.17x faster in ONNX Runtime (benchmarks/qdq_quantizers.py).
    NNCF = "nncf"
    ONNXRUNTIME = "onnxruntime"  # onnxruntime.quantization.quantize_static


class Objective(StrEnum):
    MAX_THROUGHPUT = "maxThroughput"
    MIN_LATENCY = "minLatency"
    MAX_THROUGHPUT_UNDER_LATENCY = "maxThroughputUnderLatency"


_SUFFIX_FORMATS = {
    ".onnx": SourceFormat.ONNX,
    ".pt2": SourceFormat.EXPORTED,
    ".ts": SourceFormat.TORCHSCRIPT,
    ".jit": SourceFormat.TORCHSCRIPT,
    ".torchscript": SourceFormat.TORCHSCRIPT,
}
# A Python module path: what `source.imports` names.
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class Source(KilnModel):
    uri: Annotated[str, Field(min_length=1, description="file path, file:// or s3:// URI")]
    format: SourceFormat | None = Field(
        default=None, description="inferred from the file suffix when omitted"
    )
    factory: str | None = Field(
        default=None,
        description="`module:function` returning an nn.Module; `uri` is then its state_dict",
    )
    imports: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=32)] = Field(
        default_factory=list,
        description="Python modules imported before the source loads: those that register "
        "its custom types (a Hugging Face `.pt2` needs `transformers.modeling_outputs`)",
    )

    @field_validator("imports")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE.match(name):
                raise ValueError(f"expected module paths like 'a.b', got {name!r}")
        return value

    @model_validator(mode="after")
    def _format_and_factory(self) -> Self:
        fmt = self.resolved_format()
        if fmt is SourceFormat.FACTORY:
            if self.factory is None:
                raise ValueError("factory: required when format is 'factory' (module:function)")
            if not _FACTORY.match(self.factory):
                raise ValueError(f"factory: expected 'module:function', got {self.factory!r}")
        elif self.factory is not None:
            raise ValueError(f"factory: only allowed with format 'factory', not {fmt.value!r}")
        return self

    def resolved_format(self) -> SourceFormat:
        if self.format is not None:
            return self.format
        if self.factory is not None:
            return SourceFormat.FACTORY
        suffix = PurePosixPath(self.uri).suffix.lower()
        if suffix in _SUFFIX_FORMATS:
            return _SUFFIX_FORMATS[suffix]
        choices = ", ".join(f.value for f in SourceFormat)
        raise ValueError(
            f"format: cannot infer the format of {self.uri!r} from its suffix; set one of {choices}"
        )


BATCH_DIM = "batch"


class DynamicAxis(KilnModel):
    """An axis other than the batch axis whose length varies per request (a sequence, say)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.min < self.max && (!has(self.opt) || "
                    "(self.min <= self.opt && self.opt <= self.max))",
                    "message": "expected min < max and min <= opt <= max",
                }
            ]
        }
    )

    axis: Annotated[int, Field(ge=0, le=15, description="the axis; not the batch axis")]
    name: Annotated[str, Field(max_length=63)] | None = Field(
        default=None,
        description="axes with the same name always have the same length (the sequence that "
        "input_ids and attention_mask share); default <input>_<axis>",
    )
    min: Annotated[int, Field(ge=1)]
    opt: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="the length engines are tuned for and the benchmark measures at by "
        "default; default max",
    )
    max: Annotated[int, Field(ge=1)]

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not _DIM.match(value):
            raise ValueError(f"expected an identifier (letters, digits, '_'), got {value!r}")
        if value == BATCH_DIM:
            raise ValueError(f"{BATCH_DIM!r} is the batch axis's name; pick another")
        return value

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.min >= self.max:
            raise ValueError(
                f"min {self.min} must be below max {self.max} (a fixed length is a number in shape)"
            )
        if not self.min <= self.optimal <= self.max:
            raise ValueError(f"opt {self.opt} must lie in [min, max] = [{self.min}, {self.max}]")
        return self

    @property
    def optimal(self) -> int:
        return self.max if self.opt is None else self.opt

    def contains(self, length: int) -> bool:
        return self.min <= length <= self.max

    def describe(self) -> str:
        return f"[{self.min}, {self.max}]"


class TensorSpec(KilnModel):
    # Some of the rules below, as CEL, so `kubectl apply` rejects them too. CEL treats a null
    # field as absent, so it cannot tell `batchAxis: null` (no batch axis) from an omitted one
    # (axis 0): the rule that every other -1 has a range is checked when the spec loads.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.shape.all(d, d > 0 || d == -1)",
                    "message": "dimensions must be positive, or -1 for a dynamic axis",
                    "fieldPath": ".shape",
                },
                {
                    "rule": "(has(self.dynamic) ? self.dynamic.size() : 0) >= "
                    "self.shape.filter(d, d == -1).size() - 1 && (!has(self.dynamic) || "
                    "self.dynamic.all(a, a.axis < self.shape.size() && self.shape[a.axis] == -1 "
                    "&& self.dynamic.exists_one(b, b.axis == a.axis)))",
                    "message": "every -1 but the batch axis needs a dynamic entry with its axis, "
                    "and every dynamic entry an axis that is -1 in shape, once",
                    "fieldPath": ".dynamic",
                },
                {
                    "rule": "!has(self.batchAxis) || self.batchAxis < self.shape.size()",
                    "message": "batchAxis must be an axis of shape",
                    "fieldPath": ".batchAxis",
                },
            ]
        }
    )

    name: Annotated[str, Field(min_length=1, max_length=128)]
    shape: Annotated[
        list[int],
        Field(
            max_length=16,
            description="-1 on the batch axis marks a dynamic batch; -1 on another axis marks a "
            "dynamic axis, whose range `dynamic` gives; [] is a scalar",
        ),
    ]
    dtype: DType = DType.FLOAT32
    # None is meaningful (no batch axis), so an omitted field is filled in `_default_batch_axis`
    # rather than by a schema default the API server would also apply to a scalar.
    batch_axis: Annotated[int, Field(ge=0, le=15)] | None = Field(
        default=None,
        description="the axis requests are batched along: 0 unless given (a recurrent state "
        "[2, B, 128] has it at 1); null for an input with no batch axis (a sample rate, a "
        "fully fixed model's input); a scalar (shape []) has none",
    )
    dynamic: Annotated[list[DynamicAxis], Field(max_length=15)] | None = Field(
        default=None, description="the range of each -1 other than the batch axis"
    )
    value_range: Annotated[list[int], Field(min_length=2, max_length=2)] | None = Field(
        default=None,
        alias="range",
        description="an integer input's valid values, [low, high] inclusive (token type ids: "
        "[0, 1]): what checks and exports feed where no calibration or validation set gives "
        "real samples",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_batch_axis(cls, data: Any) -> Any:
        """An omitted batchAxis is 0, or none for a scalar; an explicit null stays none."""
        if isinstance(data, dict) and "batchAxis" not in data and "batch_axis" not in data:
            shape = data.get("shape")
            data = {**data, "batchAxis": 0 if shape != [] else None}
        return data

    @model_serializer(mode="wrap")
    def _wire_batch_axis(self, handler: SerializerFunctionWrapHandler) -> Any:
        """The batch axis in the wire form only where it is not the default, so a spec that
        does not use it keeps its form (and its cache keys), and an explicit null, which
        `exclude_none` would drop and the default would turn into axis 0, survives."""
        out = handler(self)
        if isinstance(out, dict):
            key = next((k for k in ("batchAxis", "batch_axis") if k in out), "batchAxis")
            out.pop(key, None)
            if self.batch_axis != (0 if self.shape else None):
                out[key] = self.batch_axis
        return out

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _identifier(value, "tensor")

    @field_validator("shape")
    @classmethod
    def _valid_shape(cls, value: list[int]) -> list[int]:
        for axis, dim in enumerate(value):
            if dim <= 0 and dim != -1:
                raise ValueError(
                    f"axis {axis} is {dim}: dimensions must be positive, or -1 for a dynamic axis"
                )
        return value

    @model_validator(mode="after")
    def _ranges(self) -> Self:
        batch = self.batch_axis
        if batch is not None and batch >= len(self.shape):
            raise ValueError(
                f"batchAxis: {batch} is not an axis of shape {self.shape}"
                + ("; a scalar has no batch axis: batchAxis: null" if not self.shape else "")
            )
        given: dict[int, int] = {}
        for k, entry in enumerate(self.dynamic or []):
            if entry.axis >= len(self.shape) or self.shape[entry.axis] != -1:
                raise ValueError(
                    f"dynamic[{k}].axis: {entry.axis} is not a -1 axis of shape {self.shape}"
                )
            if entry.axis == batch:
                raise ValueError(
                    f"dynamic[{k}].axis: {entry.axis} is the batch axis, whose range is batchSizes"
                )
            if entry.axis in given:
                raise ValueError(f"dynamic[{k}].axis: axis {entry.axis} is listed twice")
            given[entry.axis] = k
        if self.value_range is not None:
            low, high = self.value_range
            if self.dtype in (DType.FLOAT32, DType.FLOAT16):
                raise ValueError(f"range: only for integer and bool inputs, not {self.dtype}")
            if low > high:
                raise ValueError(f"range: [{low}, {high}] is empty; expected [low, high]")
        for axis, dim in enumerate(self.shape):
            if dim == -1 and axis != batch and axis not in given:
                raise ValueError(
                    f"shape: axis {axis} is -1 but has no range; add "
                    f"dynamic: [{{axis: {axis}, min: …, max: …}}], or batchAxis: {axis} if it "
                    "is the batch axis "
                    + (
                        "(this input has none: batchAxis is null)"
                        if batch is None
                        else f"(only the batch axis, axis {batch}, needs no range)"
                    )
                )
        return self

    @property
    def dynamic_batch(self) -> bool:
        """It has a batch axis, and that axis takes any batch size."""
        return self.batch_axis is not None and self.shape[self.batch_axis] == -1

    @property
    def fixed_batch(self) -> int | None:
        """The one batch size a fixed batch axis allows; None if dynamic or absent."""
        if self.batch_axis is None or self.dynamic_batch:
            return None
        return self.shape[self.batch_axis]

    def axes(self) -> dict[int, tuple[str, DynamicAxis]]:
        """Each dynamic axis other than the batch axis: its dimension's name and range. An
        unnamed axis is `<input>_<axis>`, made an identifier (torch.export's Dim needs one:
        ONNX-style input names such as `input.1` are not)."""
        own = re.sub(r"\W", "_", self.name)
        return {a.axis: (a.name or f"{own}_{a.axis}", a) for a in self.dynamic or []}

    def concrete_shape(
        self, batch: int, lengths: Mapping[str, int] | None = None
    ) -> tuple[int, ...]:
        """The shape at `batch`, each dynamic axis at its length in `lengths`, else its opt."""
        axes = self.axes()
        shape: list[int] = []
        for axis, dim in enumerate(self.shape):
            if axis == self.batch_axis and dim == -1:
                dim = batch
            elif axis in axes:
                name, entry = axes[axis]
                dim = (lengths or {}).get(name, entry.optimal)
            shape.append(dim)
        return tuple(shape)

    def batch_of(self, shape: Sequence[int]) -> int | None:
        """The batch size an actual shape holds, None for an input with no batch axis."""
        return None if self.batch_axis is None else int(shape[self.batch_axis])

    def mismatch(self, shape: Sequence[int]) -> str | None:
        """Why an actual shape (batch axis included) does not fit this input, or None."""
        wanted = self.wanted()
        if len(shape) != len(self.shape) or any(d < 1 for d in shape):
            return f"shape {list(shape)}, expected {wanted}"
        axes = self.axes()
        for axis, (have, dim) in enumerate(zip(shape, self.shape, strict=True)):
            if axis in axes and not axes[axis][1].contains(have):
                name, entry = axes[axis]
                return (
                    f"shape {list(shape)}: axis {axis} ({name}) is {have}, "
                    f"outside {entry.describe()}"
                )
            if axis not in axes and dim != -1 and have != dim:
                return f"shape {list(shape)}, expected {wanted}"
        return None

    def wanted(self) -> list[int | str]:
        """The shape as an error message shows it: N for the batch, min..max for a range."""
        axes = self.axes()
        out: list[int | str] = []
        for axis, dim in enumerate(self.shape):
            if axis == self.batch_axis and dim == -1:
                out.append("N")
            else:
                out.append(f"{axes[axis][1].min}..{axes[axis][1].max}" if axis in axes else dim)
        return out


class Targets(KilnModel):
    cpu: bool = Field(default=True, description="also build and benchmark for CPU")
    gpu_types: list[Annotated[str, Field(max_length=63)]] = Field(
        default_factory=list,
        max_length=64,
        description="restrict to these nvidia.com/gpu.product values; empty means every one found",
    )


class Calibration(KilnModel):
    # The same rule as `_method_known` below, as CEL, so `kubectl apply` rejects it too.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.quantizer) || self.quantizer != 'nncf' || "
                    "!has(self.method) || self.method != 'entropy'",
                    "message": "method: entropy is ONNX Runtime's calibrator, which NNCF does "
                    "not have; use minmax or percentile, or quantizer: onnxruntime",
                }
            ]
        }
    )

    uri: Annotated[str, Field(min_length=1, description="folder of .npz shards, arrays by input")]
    samples: Annotated[int, Field(ge=1)] = 512
    quantizer: Quantizer | None = Field(
        default=None,
        description="what makes the Q/DQ INT8 model: nncf or onnxruntime; default: nncf, or "
        "onnxruntime where method is entropy (only it has that calibrator)",
    )
    method: CalibrationMethod | None = Field(
        default=None,
        description="how activation ranges are calibrated: entropy (ONNX Runtime only), minmax "
        "or percentile; default: the quantizer's own (NNCF's min/max ranges with bias "
        "correction; ONNX Runtime's entropy)",
    )
    percentile: Annotated[float, Field(gt=90.0, le=100.0)] = 99.999

    @model_validator(mode="after")
    def _method_known(self) -> Self:
        if self.quantizer is Quantizer.NNCF and self.method is CalibrationMethod.ENTROPY:
            raise ValueError(
                "method: entropy is ONNX Runtime's calibrator, which NNCF does not have; use "
                "minmax or percentile, or quantizer: onnxruntime"
            )
        return self

    def quantizer_used(self) -> Quantizer:
        """The quantizer this spec gets: entropy, which only ONNX Runtime has, selects it."""
        if self.quantizer is not None:
            return self.quantizer
        if self.method is CalibrationMethod.ENTROPY:
            return Quantizer.ONNXRUNTIME
        return Quantizer.NNCF

    def method_label(self) -> str:
        """The calibrator, as the stage's line and the artifact's manifest name it."""
        if self.method is not None:
            return self.method.value
        return "entropy" if self.quantizer_used() is Quantizer.ONNXRUNTIME else "NNCF defaults"


class Tolerance(KilnModel):
    atol: Annotated[float, Field(ge=0)] = 1e-4
    rtol: Annotated[float, Field(ge=0)] = 1e-3
    # About 10 units in the last place of each format: FP16 keeps 10 mantissa bits (eps
    # 9.8e-4), bf16 keeps 7 (eps 7.8e-3), so bf16's gate is 8 times FP16's.
    fp16_atol: Annotated[float, Field(ge=0)] = 1e-2
    fp16_rtol: Annotated[float, Field(ge=0)] = 1e-2
    bf16_atol: Annotated[float, Field(ge=0)] = 8e-2
    bf16_rtol: Annotated[float, Field(ge=0)] = 8e-2

    def elementwise(self, precision: Precision) -> tuple[float, float]:
        """(atol, rtol) of an element-wise gate at `precision` (INT8's gate is relative L2)."""
        if precision is Precision.FP16:
            return self.fp16_atol, self.fp16_rtol
        if precision is Precision.BF16:
            return self.bf16_atol, self.bf16_rtol
        return self.atol, self.rtol


class Accuracy(Tolerance):
    # The same rules as `_held_out` below, as CEL, so `kubectl apply` rejects them too.
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.uri) || !has(self.holdout)",
                    "message": "holdout: not used with uri (a validation set is held out "
                    "already); set one of them",
                },
                {
                    "rule": "!has(self.holdout) || "
                    "self.holdout <= (has(self.samples) ? self.samples : 8)",
                    "message": "holdout: more than samples, the number the gates check",
                },
            ]
        }
    )

    per_output: dict[str, Tolerance] = Field(
        default_factory=dict, description="overrides of the tolerances for one output"
    )
    int8_max_degradation: Annotated[float, Field(gt=0)] = Field(
        default=0.05,
        description="largest relative L2 error (|y-ref|/|ref|) of an INT8 candidate's output",
    )
    samples: Annotated[int, Field(ge=1, le=1024)] = 8
    uri: Annotated[str, Field(min_length=1)] | None = Field(
        default=None,
        description="validation set the gates run on: a folder of .npz shards, arrays by "
        "input name, like the calibration set; default: samples held out of the calibration set",
    )
    # A count, not a fraction: the gates check `samples` samples, so holding out more would
    # keep data from the quantizer that no gate looks at, and a fraction would make the gates'
    # size depend on how large the calibration set happens to be.
    holdout: Annotated[int, Field(ge=0, le=1024)] | None = Field(
        default=None,
        description="calibration samples kept from the quantizer for the gates when there is "
        "no uri (evenly spaced over the set); default: samples; 0: check in-sample",
    )

    @model_validator(mode="after")
    def _held_out(self) -> Self:
        if self.uri is not None and self.holdout is not None:
            raise ValueError(
                "holdout: not used with uri (a validation set is held out already); set one of them"
            )
        if self.holdout is not None and self.holdout > self.samples:
            raise ValueError(
                f"holdout: {self.holdout} is more than samples ({self.samples}), the number "
                "the gates check; the rest would be kept from calibration for nothing"
            )
        return self

    def tolerance(self, output: str) -> Tolerance:
        return self.per_output.get(output, self)

    def held_out(self) -> int:
        """Calibration samples the quantizer must not see: none with a validation set."""
        if self.uri is not None:
            return 0
        return self.samples if self.holdout is None else self.holdout


class Selection(KilnModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.objective) || self.objective != 'maxThroughputUnderLatency'"
                    " || has(self.latencyBudgetMs)",
                    "message": "latencyBudgetMs: required for objective maxThroughputUnderLatency",
                }
            ]
        }
    )

    objective: Objective = Objective.MAX_THROUGHPUT
    latency_budget_ms: Annotated[float, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="batch size the decision uses; default the largest for throughput "
        "objectives, the smallest for minLatency",
    )
    min_speedup: Annotated[float, Field(gt=0)] = 1.0
    prefer_simpler_within: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.10,
        description="a more complex candidate (FP16, TensorRT, INT8) replaces a simpler one "
        "only when faster by more than this fraction and beyond noise; 0: the fastest wins",
    )

    @model_validator(mode="after")
    def _budget(self) -> Self:
        if self.objective is Objective.MAX_THROUGHPUT_UNDER_LATENCY and not self.latency_budget_ms:
            raise ValueError("latencyBudgetMs: required for objective maxThroughputUnderLatency")
        return self


class Benchmark(KilnModel):
    """How candidates are timed: interleaved rounds of one window per candidate and baseline."""

    warmup_iterations: Annotated[int, Field(ge=0)] = 10
    window_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=0.5, description="length of one candidate's window in a round"
    )
    window_iterations: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="a fixed number of runs per window instead of windowSeconds"
    )
    min_rounds: Annotated[int, Field(ge=2, le=1000)] = Field(
        default=6, description="rounds before the intervals may stop the measurement"
    )
    max_rounds: Annotated[int, Field(ge=2, le=1000)] = 50
    interval_percent: Annotated[float, Field(gt=0, le=100)] = Field(
        default=5.0,
        description="stop once every speedup's 95 % interval lies within ± this percent of it",
    )
    max_seconds: Annotated[float, Field(gt=0)] = Field(
        default=20.0,
        description="time cap per batch size and measured candidate (the baseline included)",
    )
    max_baseline_spread_percent: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="the baseline's windows varying more than this (robust relative spread, "
        "1.4826 x MAD / median) marks the measurement disturbed",
    )
    max_cpu_pressure_percent: Annotated[float, Field(gt=0, le=100)] = Field(
        default=10.0,
        description="CPU pressure (/proc/pressure/cpu, share of time some task waited for a "
        "CPU) beyond this during the rounds marks the measurement disturbed",
    )
    threads: Annotated[int, Field(ge=1)] | None = Field(
        default=None,
        description="CPU threads for every runtime alike; default what the process may use "
        "(cgroup CPU quota, else CPU affinity)",
    )
    shapes: (
        Annotated[list[dict[str, Annotated[int, Field(ge=1)]]], Field(min_length=1, max_length=8)]
        | None
    ) = Field(
        default=None,
        description="lengths of the dynamic axes to measure at, one map (axis name: length) "
        "per shape; an axis left out is at its opt; the first shape decides selection; "
        "default one shape, every axis at its opt",
    )

    @model_validator(mode="after")
    def _rounds(self) -> Self:
        if self.max_rounds < self.min_rounds:
            raise ValueError("maxRounds: must be at least minRounds")
        return self


class Artifacts(KilnModel):
    """Artifacts are content-addressed and may be shared by several resources, so they outlive
    the resource that built them (deleting one removes only its Kubernetes children)."""

    uri: str | None = Field(
        default=None, description="where built artifacts go (file path, file:// or s3://)"
    )
    credentials_secret: str | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and optionally "
        "AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) for the builder Jobs and servers",
    )


class Serving(KilnModel):
    """The inference Deployment the operator rolls out per target with a selected engine."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.replicas) || type(self.replicas) == int || "
                    "has(self.targetThroughput)",
                    "message": "replicas: 'auto' needs serving.targetThroughput",
                }
            ]
        }
    )

    replicas: Annotated[int, Field(ge=0, le=1000)] | Literal["auto"] = Field(
        default=1,
        description="pods per target, or 'auto': the replicas that targetThroughput needs",
    )
    target_throughput: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="samples/s the service must sustain (capacity and cost)"
    )
    utilization: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.8, description="share of a replica's measured throughput to plan on"
    )
    port: Annotated[int, Field(ge=1, le=65535)] = Field(default=8080, description="REST port")
    grpc_port: Annotated[int, Field(ge=1, le=65535)] = Field(
        default=8081, description="gRPC port (Open Inference Protocol, Triton's clients)"
    )
    batch_window_ms: Annotated[float, Field(ge=0, le=1000)] = Field(
        default=0.0,
        description="how long a batch waits for more requests once the engine is free; 0: "
        "none, what queued while the engine ran is the batch (Triton's default)",
    )
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="container resources (requests/limits)"
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _auto(self) -> Self:
        if self.replicas == "auto" and self.target_throughput is None:
            raise ValueError("replicas: 'auto' needs serving.targetThroughput")
        if self.grpc_port == self.port:
            raise ValueError(f"grpcPort: {self.grpc_port} is also the REST port; give it another")
        return self


class Cost(KilnModel):
    """Prices for capacity planning: what one replica-hour of each target costs."""

    hourly: dict[Annotated[str, Field(max_length=63)], Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        max_length=64,
        description="price of one replica-hour per target name: 'cpu' or a GPU type",
    )
    hours_per_month: Annotated[float, Field(gt=0, le=744)] = 730.0
    currency: Annotated[str, Field(min_length=1, max_length=8)] = "$"


# An argument the model is always called with, never sent with a request: a Python
# `int`/`float`/`bool` argument of a forward (a sample rate), or an input fixed for this
# deployment. Engines are built with it folded in; the server's metadata lists it. (A comment,
# not a docstring: pydantic would put a docstring in the CRD.)
class Constant(KilnModel):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    value: float = Field(
        description="the argument's value: a number (0 or 1 for a bool); its type is the one "
        "the forward declares (int, float, bool or a tensor)"
    )
    dtype: DType | None = Field(
        default=None,
        description="for a tensor argument: the 0-d tensor's dtype; default: the forward's own "
        "declared type (an ONNX graph's input type; int64 or float32 for an undeclared tensor)",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _identifier(value, "argument")

    @property
    def integral(self) -> bool:
        return float(self.value).is_integer()

    def python_value(self, kind: str) -> int | float | bool:
        """The value as the forward's declared Python type `kind` (int, float, bool)."""
        if kind == "float":
            return float(self.value)
        if not self.integral:
            raise ValueError(f"{self.value} is not a whole number, and the argument is {kind}")
        if kind == "bool":
            if self.value not in (0, 1):
                raise ValueError(f"{self.value} is not 0 or 1, and the argument is bool")
            return bool(self.value)
        return int(self.value)

    @property
    def number(self) -> int | float:
        """The value as it reads: 16000, not 16000.0."""
        return int(self.value) if self.integral else self.value

    def text(self) -> str:
        return f"{self.name}={self.number}"


class OptimizedModelSpec(KilnModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # precisions defaults to all three, int8 included.
                    "rule": "has(self.calibration) || "
                    "(has(self.precisions) && !('int8' in self.precisions))",
                    "message": "calibration: required when precisions includes int8",
                }
            ]
        }
    )

    source: Source
    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=64)]
    constants: Annotated[list[Constant], Field(max_length=16)] = Field(
        default_factory=list,
        description="arguments the model is always called with and requests never carry "
        "(a forward's `sr: int`): folded into every engine",
    )
    outputs: Annotated[
        list[Annotated[str, Field(max_length=128)]], Field(min_length=1, max_length=64)
    ]
    batch_sizes: Annotated[
        list[Annotated[int, Field(ge=1)]], Field(min_length=1, max_length=32)
    ] = Field(default_factory=lambda: [1])
    backends: Annotated[list[Backend], Field(min_length=1)] = Field(
        default_factory=lambda: list(DEFAULT_BACKENDS)
    )
    precisions: Annotated[list[Precision], Field(min_length=1)] = Field(
        default_factory=lambda: list(Precision)
    )
    targets: Targets = Field(default_factory=Targets)
    calibration: Calibration | None = None
    accuracy: Accuracy = Field(default_factory=Accuracy)
    selection: Selection = Field(default_factory=Selection)
    benchmark: Benchmark = Field(default_factory=Benchmark)
    artifacts: Artifacts = Field(default_factory=Artifacts)
    serving: Serving = Field(default_factory=Serving)
    cost: Cost = Field(default_factory=Cost)
    opset: Annotated[int, Field(ge=17, le=23)] = 18

    @model_serializer(mode="wrap")
    def _wire_constants(self, handler: SerializerFunctionWrapHandler) -> Any:
        """No `constants` in the wire form of a spec without any: it keeps its form (and the
        operator's request keys, which hash the spec)."""
        out = handler(self)
        if isinstance(out, dict) and not self.constants:
            out.pop("constants", None)
        return out

    @model_validator(mode="before")
    @classmethod
    def _constants_not_inputs(cls, data: Any) -> Any:
        """`inputs[i].value` is what a user who reads "a constant input" writes: say where it
        goes rather than that `value` is an unknown field."""
        if isinstance(data, dict):
            for i, entry in enumerate(data.get("inputs") or []):
                if isinstance(entry, dict) and "value" in entry:
                    name = entry.get("name", "…")
                    raise ValueError(
                        f"inputs[{i}].value: an input is sent with each request; an argument "
                        f"fixed for every request goes in constants: [{{name: {name}, value: "
                        f"{entry['value']}}}]"
                    )
        return data

    @field_validator("inputs")
    @classmethod
    def _unique_inputs(cls, value: list[TensorSpec]) -> list[TensorSpec]:
        _require_unique([t.name for t in value])
        return value

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, value: list[str]) -> list[str]:
        _require_unique(value)
        for name in value:
            _identifier(name, "tensor")
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _sorted_batches(cls, value: list[int]) -> list[int]:
        _require_unique([str(b) for b in value])
        return sorted(value)

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        inputs = {t.name for t in self.inputs}
        for i, name in enumerate(self.outputs):
            if name in inputs:
                raise ValueError(
                    f"outputs[{i}]: {name!r} is also an input's name; a served tensor's name "
                    "must say which one it is"
                )
        constant_names: set[str] = set()
        for i, constant in enumerate(self.constants):
            if constant.name in inputs or constant.name in constant_names:
                what = "an input" if constant.name in inputs else "another constant"
                raise ValueError(
                    f"constants[{i}].name: {constant.name!r} is also {what}; an argument is "
                    "either sent with each request or fixed, once"
                )
            constant_names.add(constant.name)
        for i, tensor in enumerate(self.inputs):
            fixed = tensor.fixed_batch
            if fixed is not None and self.batch_sizes != [fixed]:
                raise ValueError(
                    f"inputs[{i}].shape: axis {tensor.batch_axis} is fixed at {fixed} (the "
                    f"batch axis) but batchSizes is {self.batch_sizes}; use -1 for a dynamic "
                    "batch axis, or batchAxis: the axis that is the batch (null: none)"
                )
        if not self.batched_inputs() and self.batch_sizes != [1]:
            raise ValueError(
                f"batchSizes: {self.batch_sizes}, but no input has a batch axis (each has "
                "batchAxis: null or is a scalar); the model runs at its one shape: batchSizes: [1]"
            )
        dims = self.dims()
        for i, shape in enumerate(self.benchmark.shapes or []):
            problem = _shape_problem(shape, dims)
            if problem:
                raise ValueError(f"benchmark.shapes[{i}]: {problem}")
        if Precision.INT8 in self.precisions and self.calibration is None:
            raise ValueError("calibration: required when precisions includes int8")
        unknown = sorted(set(self.accuracy.per_output) - set(self.outputs))
        if unknown:
            raise ValueError(f"accuracy.perOutput: {unknown} not among outputs {self.outputs}")
        for target in self.cost.hourly:
            problem = self.unknown_target(target)
            if problem:
                raise ValueError(f"cost.hourly: {target!r} {problem}")
        chosen = self.selection.batch_size
        if chosen is not None and chosen not in self.batch_sizes:
            raise ValueError(
                f"selection.batchSize: {chosen} is not one of batchSizes {self.batch_sizes}"
            )
        return self

    def batched_inputs(self) -> list[TensorSpec]:
        """The inputs that have a batch axis (the others are the same for the whole batch)."""
        return [t for t in self.inputs if t.batch_axis is not None]

    @property
    def batch_varies(self) -> bool:
        """Every input with a batch axis takes any batch size, and some size above 1 is asked
        for: what an engine must keep dynamic (tracing at batch 1 would make it a constant)."""
        batched = self.batched_inputs()
        return self.batch_sizes[-1] >= 2 and bool(batched) and all(t.dynamic_batch for t in batched)

    @property
    def merges_requests(self) -> bool:
        """Whether a server may run several requests as one batch: only where every input
        is batched on axis 0, so requests concatenate and outputs split on axis 0 (an output's
        batch axis is not declared; with a state batched on axis 1, it need not be 0)."""
        return self.batch_varies and all(t.batch_axis == 0 for t in self.inputs)

    def dims(self) -> dict[str, DynamicAxis]:
        """Every named dynamic axis beyond the batch axis, in the order the inputs list them.
        Raises if one name has two ranges: they are one length, so one range."""
        out: dict[str, DynamicAxis] = {}
        for i, tensor in enumerate(self.inputs):
            for axis, (name, entry) in tensor.axes().items():
                seen = out.setdefault(name, entry)
                if (seen.min, seen.optimal, seen.max) != (entry.min, entry.optimal, entry.max):
                    k = [a.axis for a in tensor.dynamic or []].index(axis)
                    raise ValueError(
                        f"inputs[{i}].dynamic[{k}]: {name!r} is min {entry.min}, opt "
                        f"{entry.optimal}, max {entry.max} here but min {seen.min}, opt "
                        f"{seen.optimal}, max {seen.max} on an earlier input; axes that share a "
                        "name share one range"
                    )
        return out

    def length_conflict(self, shapes: Mapping[str, Sequence[int]]) -> str | None:
        """Why the inputs' actual shapes give one named axis two lengths, or None."""
        return length_conflict(self.inputs, shapes)

    def benchmark_lengths(self) -> list[dict[str, int]]:
        """The lengths of every dynamic axis for each shape the benchmark measures, the
        deciding one first; one empty map where no axis beyond the batch is dynamic."""
        dims = self.dims()
        shapes = self.benchmark.shapes or [{}]
        return [{n: shape.get(n, d.optimal) for n, d in dims.items()} for shape in shapes]

    def unknown_target(self, name: str) -> str | None:
        """Why `name` cannot be one of this spec's targets, or None if it can be."""
        if name == "cpu":
            return None if self.targets.cpu else "is not a target: targets.cpu is false"
        if self.targets.gpu_types and name not in self.targets.gpu_types:
            expected = f"'cpu' or one of targets.gpuTypes {self.targets.gpu_types}"
            return f"is not a target: expected {expected}"
        if not _LABEL_VALUE.match(name):
            return "is not a GPU type (a label value: letters, digits, '-', '_', '.')"
        return None

    def decision_batch_size(self) -> int:
        """The batch size whose measurements decide selection and fill the headline numbers."""
        if self.selection.batch_size is not None:
            return self.selection.batch_size
        if self.selection.objective is Objective.MIN_LATENCY:
            return self.batch_sizes[0]
        return self.batch_sizes[-1]


class ObjectMeta(KilnModel):
    # Metadata comes from the API server with many more fields than Kiln reads.
    model_config = ConfigDict(extra="allow")

    name: Annotated[
        str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None


class OptimizedModel(KilnModel):
    api_version: str = Field(default=f"{API_GROUP}/{API_VERSION}", alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: OptimizedModelSpec
    status: dict[str, Any] | None = None

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        if value != f"{API_GROUP}/{API_VERSION}":
            raise ValueError(f"expected {API_GROUP}/{API_VERSION}, got {value!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"expected {KIND}, got {value!r}")
        return value


def batch_size_of(inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]) -> int:
    """The batch size actual shapes (by input name) hold: the first batched input's length on
    its batch axis; 1 where no input has a batch axis (the model runs at its one shape)."""
    for tensor in inputs:
        if tensor.batch_axis is not None:
            return int(shapes[tensor.name][tensor.batch_axis])
    return 1


def length_conflict(
    inputs: Sequence[TensorSpec], shapes: Mapping[str, Sequence[int]]
) -> str | None:
    """Why actual shapes (by input name) give one named axis two lengths, or None. A function
    of the inputs alone, so a server holding only them checks the same rule as the spec."""
    seen: dict[str, tuple[str, int]] = {}
    for tensor in inputs:
        if tensor.name not in shapes:
            continue
        for axis, (name, _) in tensor.axes().items():
            length = shapes[tensor.name][axis]
            first = seen.setdefault(name, (tensor.name, length))
            if first[1] != length:
                return (
                    f"{name!r} is {first[1]} in {first[0]!r} but {length} in "
                    f"{tensor.name!r}; they share one length"
                )
    return None


def _shape_problem(shape: dict[str, int], dims: dict[str, DynamicAxis]) -> str | None:
    if not dims:
        return "no input has a dynamic axis beyond the batch axis; leave shapes out"
    for name, length in shape.items():
        if name not in dims:
            return f"{name!r} is not a dynamic axis; the spec's are {sorted(dims)}"
        if not dims[name].contains(length):
            return f"{name}: {length} is outside its range {dims[name].describe()}"
    return None


def _require_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{name!r} appears more than once")
        seen.add(name)
