"""The spec's constants as a forward takes them: each argument's declared type (a TorchScript
schema, a Python forward's annotations) and the value in that type, a Python number or a 0-d
tensor. Where a constant goes in the call is the binding's business
(kiln.builder.torch_source.bind_inputs)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import Constant, DType


def schema_arguments(module: Any) -> list[Any]:
    schema = getattr(getattr(module, "forward", None), "schema", None)
    return [] if schema is None else list(schema.arguments)[1:]  # without self


_KINDS = {int: "int", float: "float", bool: "bool", torch.Tensor: "Tensor"}


def declared_kinds(module: Any, scripted: bool) -> dict[str, str]:
    """Each argument's declared type, as `int`, `float`, `bool`, `Tensor`, another type's
    name, or absent where the forward declares none."""
    if scripted:
        return {a.name: str(a.type).rstrip("?") for a in schema_arguments(module)}
    try:
        parameters = inspect.signature(module.forward).parameters
    except (AttributeError, TypeError, ValueError):
        return {}
    kinds: dict[str, str] = {}
    for name, parameter in parameters.items():
        annotation = parameter.annotation
        if annotation is parameter.empty:
            continue
        if not isinstance(annotation, str):
            annotation = _KINDS.get(annotation) or str(annotation)
        kinds[name] = _kind_of(annotation)
    return kinds


def _kind_of(text: str) -> str:
    """`int`, `torch.Tensor`, `Optional[int]`, `int | None`, `<class 'int'>`: the type's
    short name, an optional's inner one (a constant is never None)."""
    text = text.strip().removeprefix("<class '").removesuffix("'>")
    if text.startswith(("Optional[", "typing.Optional[")) and text.endswith("]"):
        text = text.partition("[")[2][:-1]
    text = text.removesuffix("| None").removeprefix("None |").strip()
    return text.rpartition(".")[2]


_TORCH_DTYPES = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.INT64: torch.int64,
    DType.INT32: torch.int32,
    DType.UINT8: torch.uint8,
    DType.BOOL: torch.bool,
}


def constant_value(constant: Constant, kind: str, where: str) -> Any:
    """The constant as the forward declares its argument: a Python number for `int`,
    `float`, `bool` (and for an undeclared one without a dtype), a 0-d tensor for `Tensor`
    (or where the spec gives a dtype)."""
    try:
        if kind in ("int", "float", "bool"):
            return constant.python_value(kind)
        if kind in ("Tensor", "") and (kind == "Tensor" or constant.dtype is not None):
            dtype = constant.dtype or (DType.INT64 if constant.integral else DType.FLOAT32)
            return torch.tensor(constant.value, dtype=_TORCH_DTYPES[dtype])
        if kind == "":
            return constant.python_value("int" if constant.integral else "float")
    except ValueError as exc:
        raise KilnInputError(f"{where}.value", str(exc)) from None
    raise KilnInputError(
        f"{where}.name",
        f"the forward's {constant.name!r} is {kind}; a constant is a number, a bool or a tensor",
    )
