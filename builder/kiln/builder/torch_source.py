"""Load a PyTorch source (TorchScript, torch.export program, factory + weights) and check that
it accepts the spec's inputs and returns as many outputs as the spec names."""

from __future__ import annotations

import importlib
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


def check_torch_signature(module: Any, spec: OptimizedModelSpec) -> None:
    """One forward pass at the smallest batch size: wrong shapes and dtypes surface here."""
    batch = spec.batch_sizes[0]
    feeds = random_feeds(spec.inputs, batch, seed=0)
    args = [torch.from_numpy(feeds[t.name]) for t in spec.inputs]
    described = ", ".join(
        f"{t.name}{list(t.concrete_shape(batch))}:{t.dtype.value}" for t in spec.inputs
    )
    try:
        with torch.inference_mode():
            outputs = flatten_outputs(module(*args))
    except Exception as exc:
        raise KilnInputError(
            "spec.inputs",
            f"the model does not accept {described}: {_first_line(exc)}",
        ) from None
    if len(outputs) != len(spec.outputs):
        raise KilnInputError(
            "spec.outputs",
            f"names {len(spec.outputs)} outputs {spec.outputs} but the model returns "
            f"{len(outputs)} tensor(s)",
        )
