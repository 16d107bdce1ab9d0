"""Open Inference Protocol (KServe v2) REST messages and tensor decoding (pure).

Requests are checked against the model's declared inputs before anything runs, and every
mismatch becomes a 4xx that says what was expected."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kiln.api.spec import DType, OptimizedModelSpec, TensorSpec, length_conflict
from kiln.runtime.base import Array, Feeds

# Open Inference Protocol datatype names <-> spec dtypes and numpy types.
DATATYPES: dict[DType, str] = {
    DType.FLOAT32: "FP32",
    DType.FLOAT16: "FP16",
    DType.INT64: "INT64",
    DType.INT32: "INT32",
    DType.UINT8: "UINT8",
    DType.BOOL: "BOOL",
}
_NUMPY = {
    "FP32": np.float32,
    "FP16": np.float16,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


class BadRequestError(ValueError):
    """A client error: answered with 400 and this message."""


def malformed(exc: ValidationError, whole: str) -> str:
    """A request the protocol's models refuse, in one line: the first field and why (`whole`
    names the request where the field is the request itself), not pydantic's dump."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    return f"malformed request: {where}: {first['msg']}"


class RequestTensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None  # absent when its bytes follow the header (binary extension)
    parameters: dict[str, Any] | None = None

    def binary_size(self) -> int | None:
        size = (self.parameters or {}).get("binary_data_size")
        return None if size is None else int(size)


class RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class ResponseTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[ResponseTensor]


def _flatten(data: list[Any]) -> list[Any]:
    # Clients may send nested row-major lists or a flat list; both mean the same tensor.
    if data and isinstance(data[0], list):
        return [v for row in data for v in _flatten(row)]
    return data


# The binary tensor data extension (Triton's, used by its clients and perf_analyzer): the JSON
# header's length in this header, each binary tensor's bytes after it in order.
HEADER_LENGTH = "inference-header-content-length"
# The protocol extensions this server speaks, as `GET /v2` and ServerMetadata list them.
EXTENSIONS = ["binary_tensor_data", "statistics"]


def split_body(body: bytes | memoryview, header_length: str | None) -> tuple[bytes, memoryview]:
    """(JSON header, the binary bytes after it, as a view: never copied)."""
    view = memoryview(body)
    if header_length is None:
        return bytes(body), view[len(view) :]  # bytes(bytes) is the same object, no copy
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequestError(
            f"Inference-Header-Content-Length {header_length!r} is not a number"
        ) from None
    if not 0 < length <= len(view):
        raise BadRequestError(
            f"Inference-Header-Content-Length {length} is outside the body of {len(view)} bytes"
        )
    return bytes(view[:length]), view[length:]


def binary_inputs(request: InferRequest, binary: memoryview) -> dict[str, memoryview]:
    """Each binary input's bytes, cut from `binary` in the order of the inputs; the sizes must
    add up to exactly what follows the header."""
    raw: dict[str, memoryview] = {}
    offset = 0
    for tensor in request.inputs:
        size = tensor.binary_size()
        if size is None:
            continue
        if size < 0 or offset + size > len(binary):
            raise BadRequestError(
                f"input {tensor.name!r}: binary_data_size {size} runs past the "
                f"{len(binary)} bytes after the header"
            )
        raw[tensor.name] = binary[offset : offset + size]
        offset += size
    if offset != len(binary):
        raise BadRequestError(
            f"binary_data_size values add up to {offset} bytes, but {len(binary)} follow the header"
        )
    return raw


def decode(
    request: InferRequest,
    inputs: list[TensorSpec],
    max_batch: int | None,
    raw: dict[str, memoryview] | None = None,
) -> Feeds:
    """Feeds for the runner, or BadRequestError naming the input and what was expected.
    `raw`: inputs given as bytes (binary extension, gRPC raw contents), used without a copy."""
    given = {t.name: t for t in request.inputs}
    expected = [t.name for t in inputs]
    unknown = sorted(set(given) - set(expected))
    if unknown:
        raise BadRequestError(f"unknown input(s) {unknown}; this model takes {expected}")
    feeds: Feeds = {}
    batch: int | None = None
    for spec in inputs:
        tensor = given.get(spec.name)
        if tensor is None:
            raise BadRequestError(f"missing input {spec.name!r}; this model takes {expected}")
        want_type = DATATYPES[spec.dtype]
        if tensor.datatype != want_type:
            raise BadRequestError(
                f"input {spec.name!r}: datatype {tensor.datatype}, expected {want_type}"
            )
        shape = tensor.shape
        problem = spec.mismatch(shape)  # rank, fixed dimensions, each dynamic axis's range
        if problem is not None:
            raise BadRequestError(f"input {spec.name!r}: {problem}")
        size = spec.batch_of(shape)  # None: an input with no batch axis
        if batch is not None and size is not None and size != batch:
            raise BadRequestError(
                f"input {spec.name!r}: batch {size} differs from the other inputs' {batch} "
                f"(its batch axis is axis {spec.batch_axis})"
            )
        batch = size if size is not None else batch
        data = (raw or {}).get(spec.name)
        if data is not None:
            feeds[spec.name] = _from_bytes(spec.name, data, want_type, shape)
        else:
            feeds[spec.name] = _from_values(spec.name, tensor.data, want_type, shape)
    if max_batch is not None and batch is not None and batch > max_batch:
        raise BadRequestError(
            f"batch {batch} exceeds the largest batch size this engine was built for ({max_batch})"
        )
    # Each input fits its own ranges; inputs sharing a named axis (ids and their mask) must
    # also agree on its length, which no single input's check can see.
    conflict = length_conflict(inputs, {name: array.shape for name, array in feeds.items()})
    if conflict is not None:
        raise BadRequestError(f"inputs: {conflict}")
    return feeds


def _from_bytes(name: str, data: memoryview, datatype: str, shape: list[int]) -> Array:
    dtype = np.dtype(_NUMPY[datatype])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise BadRequestError(
            f"input {name!r}: {len(data)} bytes for {datatype} {shape} ({expected} expected)"
        )
    # A view over the request's bytes: no copy on the way to the runtime.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _from_values(name: str, values: list[Any] | None, datatype: str, shape: list[int]) -> Array:
    if values is None:
        raise BadRequestError(f"input {name!r}: neither data nor parameters.binary_data_size")
    flat = _flatten(values)
    count = int(np.prod(shape))
    if len(flat) != count:
        raise BadRequestError(
            f"input {name!r}: {len(flat)} values for shape {shape} ({count} expected)"
        )
    try:
        return np.asarray(flat, dtype=_NUMPY[datatype]).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise BadRequestError(f"input {name!r}: data is not {datatype}: {exc}") from None


def wants_binary(request: InferRequest, name: str) -> bool:
    """Does output `name` go back as raw bytes? `binary_data_output` on the request sets the
    default, `binary_data` on the output overrides it."""
    default = bool((request.parameters or {}).get("binary_data_output", False))
    asked = next((o for o in request.outputs or [] if o.name == name), None)
    return bool((asked.parameters or {}).get("binary_data", default)) if asked else default


def requested_outputs(request: InferRequest, available: list[str]) -> list[str]:
    """The outputs to answer with, in the request's order (all of them when none is named)."""
    wanted = [o.name for o in request.outputs] if request.outputs else available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise BadRequestError(f"unknown output(s) {unknown}; this model has {available}")
    return wanted


def encode_binary(name: str, array: Array) -> tuple[ResponseTensor, memoryview]:
    """The tensor's header and a view of its bytes (no copy: the response body joins the
    header and the views in one copy)."""
    datatype = datatype_of(array)
    data = np.asarray(array, dtype=_NUMPY[datatype], order="C").data.cast("B")
    tensor = ResponseTensor(
        name=name,
        shape=list(array.shape),
        datatype=datatype,
        parameters={"binary_data_size": data.nbytes},
    )
    return tensor, data


def datatype_of(array: Array) -> str:
    return {np.dtype(v): k for k, v in _NUMPY.items()}.get(array.dtype, "FP32")


def encode(name: str, array: Array) -> ResponseTensor:
    datatype = datatype_of(array)
    values: list[Any] = array.astype(_NUMPY[datatype]).reshape(-1).tolist()
    return ResponseTensor(name=name, shape=list(array.shape), datatype=datatype, data=values)


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": DATATYPES[spec.dtype], "shape": spec.shape}


def warm_up_points(spec: OptimizedModelSpec) -> list[tuple[int, dict[str, int]]]:
    """(batch, lengths of the dynamic axes) of the warm-up runs whose answers
    `output_metadata` compares: batch 1 with every axis at its opt, then, if anything can
    vary, batch 2 (where the engine takes it) with every axis at another length in its range
    (its min, or its max where opt is the min). Varying them all at once is enough: an output
    dimension that follows any of them changes, one that follows none does not."""
    dims = spec.dims()
    first = (1, {name: dim.optimal for name, dim in dims.items()})
    if not spec.batch_varies and not dims:
        return [first]
    other = {name: dim.min if dim.min != dim.optimal else dim.max for name, dim in dims.items()}
    return [first, (2 if spec.batch_varies else 1, other)]


def output_metadata(
    names: list[str], at_one: list[Array], at_two: list[Array] | None
) -> list[dict[str, Any]]:
    """Output metadata from two warm-up answers (`warm_up_points`: batch 1 and batch 2, the
    dynamic axes at two lengths): a dimension that changed between them follows the batch or a
    length and is -1, as in the inputs' metadata. With one answer (an engine built for batch 1
    only, no dynamic axis) every dimension is as measured."""
    out = []
    for i, name in enumerate(names):
        one = list(at_one[i].shape)
        two = list(at_two[i].shape) if at_two is not None else one
        shape = [a if a == b else -1 for a, b in zip(one, two, strict=False)]
        out.append({"name": name, "datatype": datatype_of(at_one[i]), "shape": shape})
    return out
