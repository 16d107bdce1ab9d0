"""Load a PyTorch source (TorchScript, torch.export program, factory + weights) and check that
it accepts the spec's inputs and returns as many outputs as the spec names."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec, SourceFormat
from kiln.builder.feeds import random_feeds
from kiln.runtime.torch_runner import flatten_outputs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:400]


_DESCRIBED = {
    SourceFormat.TORCHSCRIPT: "a TorchScript archive (torch.jit.save)",
    SourceFormat.EXPORTED: "a torch.export program (torch.export.save)",
    SourceFormat.FACTORY: "a state_dict for the factory's module",
    SourceFormat.ONNX: "an ONNX model",
}


def load_torch_module(spec: OptimizedModelSpec, path: Path, base_dir: Path) -> Any:
    fmt = spec.source.resolved_format()
    where = "spec.source.uri"
    try:
        if fmt is SourceFormat.TORCHSCRIPT:
            module: Any = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        elif fmt is SourceFormat.EXPORTED:
            module = torch.export.load(str(path)).module()
        elif fmt is SourceFormat.FACTORY:
            module = _from_factory(spec.source.factory or "", path, base_dir)
        else:
            raise ValueError(f"{fmt.value} sources have no PyTorch module")
    except KilnInputError:
        raise
    except Exception as exc:
        raise KilnInputError(
            f"{where} ({path})", f"cannot load as {_DESCRIBED[fmt]}: {_first_line(exc)}"
        ) from None
    if hasattr(module, "eval") and fmt is not SourceFormat.EXPORTED:
        module.eval()
    return module


def _from_factory(factory: str, weights: Path, base_dir: Path) -> Any:
    module_name, _, fn_name = factory.partition(":")
    # The factory's module is looked up next to the spec file first, then on sys.path.
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise KilnInputError("spec.source.factory", f"cannot import {factory!r}: {exc}") from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise KilnInputError(
            "spec.source.factory", f"{factory!r} returned {type(model).__name__}, not nn.Module"
        )
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise KilnInputError(
            f"spec.source.uri ({weights})",
            f"weights do not fit {factory!r}: {_first_line(exc)}",
        ) from None
    return model


def input_names(module: Any) -> list[str] | None:
    """The forward's argument names (torch.export programs, factory modules and TorchScript
    keep them), or None where it takes only *args."""
    try:
        parameters = inspect.signature(module.forward if hasattr(module, "forward") else module)
    except (TypeError, ValueError):
        return None
    names = [
        p.name
        for p in parameters.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]
    return names or None


def binding_problem(model: list[str] | None, spec: list[str]) -> tuple[str, str] | None:
    """(field, message) when the spec's input names cannot bind to the model's arguments.
    Inputs are passed in the spec's order, so that order must be the model's."""
    if model is None:
        return None  # only *args: bound by position
    takes = ", ".join(model)
    for i, name in enumerate(spec):
        if name not in model:
            return (
                f"spec.inputs[{i}].name",
                f"{name!r} is not an input of the model; its forward takes ({takes})",
            )
    if spec != model[: len(spec)]:
        return (
            "spec.inputs",
            f"list the inputs in the model's order ({takes}); the spec has ({', '.join(spec)})",
        )
    return None


def check_torch_signature(module: Any, spec: OptimizedModelSpec) -> None:
    """The spec's input names against the forward's, then one forward pass per batch size the
    spec lists: wrong names, shapes, dtypes and batch sizes surface here, before any export."""
    # TorchScript archives are bound by position (a traced archive's names are the tracer's).
    scripted = spec.source.resolved_format() is SourceFormat.TORCHSCRIPT
    names = None if scripted else input_names(module)
    problem = binding_problem(names, [t.name for t in spec.inputs])
    if problem is not None:
        raise KilnInputError(*problem)
    for i, batch in enumerate(spec.batch_sizes):
        outputs = _forward(module, spec, batch, "spec.inputs" if i == 0 else "spec.batchSizes")
        if i == 0 and len(outputs) != len(spec.outputs):
            raise KilnInputError(
                "spec.outputs",
                f"names {len(spec.outputs)} outputs {spec.outputs} but the model returns "
                f"{len(outputs)} tensor(s)",
            )


def _forward(module: Any, spec: OptimizedModelSpec, batch: int, field: str) -> list[Any]:
    feeds = random_feeds(spec.inputs, batch, seed=0)
    args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
    described = ", ".join(
        f"{t.name}{list(t.concrete_shape(batch))}:{t.dtype.value}" for t in spec.inputs
    )
    try:
        with torch.inference_mode():
            return flatten_outputs(module(*args))
    except Exception as exc:
        what = f"batch size {batch}" if field == "spec.batchSizes" else described
        raise KilnInputError(
            field, f"the model does not accept {what}: {_first_line(exc)}"
        ) from None
