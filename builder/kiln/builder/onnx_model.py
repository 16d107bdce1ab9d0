"""Check an ONNX model (a user's, or our own export) against the spec's inputs and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.api.errors import KilnInputError
from kiln.api.spec import Constant, DType, OptimizedModelSpec

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: DType.FLOAT32,
    onnx.TensorProto.FLOAT16: DType.FLOAT16,
    onnx.TensorProto.INT64: DType.INT64,
    onnx.TensorProto.INT32: DType.INT32,
    onnx.TensorProto.UINT8: DType.UINT8,
    onnx.TensorProto.BOOL: DType.BOOL,
}


def load_onnx(path: Path, where: str) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        raise KilnInputError(f"{where} ({path})", f"not a valid ONNX model: {text}") from None
    return model


def check_onnx_signature(model: onnx.ModelProto, spec: OptimizedModelSpec) -> None:
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name: i for i in model.graph.input if i.name not in initializers}
    for index, tensor in enumerate(spec.inputs):
        where = f"spec.inputs[{index}]"
        value = graph_inputs.get(tensor.name)
        if value is None:
            raise KilnInputError(
                f"{where}.name",
                f"{tensor.name!r} is not an input of the model; "
                f"its inputs are {sorted(graph_inputs)}",
            )
        ttype = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        if dtype is not tensor.dtype:
            got = dtype.value if dtype else onnx.TensorProto.DataType.Name(ttype.elem_type)
            raise KilnInputError(
                f"{where}.dtype", f"the model expects {got}, spec says {tensor.dtype.value}"
            )
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in ttype.shape.dim]
        if len(dims) != len(tensor.shape):
            raise KilnInputError(
                f"{where}.shape",
                f"the model expects rank {len(dims)} {dims}, spec says {tensor.shape}",
            )
        for axis, (want, have) in enumerate(zip(tensor.shape, dims, strict=True)):
            if have == -1:
                continue  # symbolic in the model: anything goes
            if want == -1:
                raise KilnInputError(
                    f"{where}.shape",
                    f"axis {axis} is dynamic in the spec but fixed at {have} in the model",
                )
            if want != have:
                raise KilnInputError(
                    f"{where}.shape", f"axis {axis} is {have} in the model, spec says {want}"
                )
    extra = sorted(set(graph_inputs) - {t.name for t in spec.inputs})
    if extra:
        raise KilnInputError("spec.inputs", f"the model also needs inputs {extra}")
    outputs = [o.name for o in model.graph.output]
    for index, name in enumerate(spec.outputs):
        if name not in outputs:
            raise KilnInputError(
                f"spec.outputs[{index}]",
                f"{name!r} is not an output of the model; it has {outputs}",
            )


def constant_initializer(graph_input: onnx.ValueInfoProto, value: Any) -> onnx.TensorProto:
    """An initializer that stands for `graph_input` with `value`: the input's element type,
    and its rank (every axis of length 1), so the graph computes what it computed when fed."""
    ttype = graph_input.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
    raw = value.numpy() if hasattr(value, "numpy") else value
    array = np.full([1] * len(ttype.shape.dim), raw, dtype=dtype)
    return numpy_helper.from_array(array, graph_input.name)


def fold_source_constants(model: onnx.ModelProto, constants: list[Constant]) -> onnx.ModelProto:
    """An ONNX source with the spec's constants folded in: each names a graph input, which
    becomes an initializer of its value (ONNX Runtime then folds what depends on it)."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in initializers}
    for index, constant in enumerate(constants):
        value_info = inputs.get(constant.name)
        if value_info is None:
            raise KilnInputError(
                f"spec.constants[{index}].name",
                f"{constant.name!r} is not an input of the model; its inputs are {sorted(inputs)}",
            )
        if any(
            d.HasField("dim_value") and d.dim_value != 1
            for d in value_info.type.tensor_type.shape.dim
        ):
            raise KilnInputError(
                f"spec.constants[{index}].name",
                f"{constant.name!r} is not a scalar in the model; a constant is one value",
            )
        graph.initializer.append(constant_initializer(value_info, constant.value))
    fixed = {c.name for c in constants}
    kept = [i for i in graph.input if i.name not in fixed]
    del graph.input[:]
    graph.input.extend(kept)
    return model
