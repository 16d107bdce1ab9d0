"""Stage: export a PyTorch module to ONNX with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import onnx
import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import BATCH_DIM, OptimizedModelSpec, SourceFormat, TensorSpec
from kiln.builder.feeds import trace_lengths
from kiln.builder.outputs import SpecOutputs
from kiln.builder.torch_source import TorchModel
from kiln.runtime.errors import root_cause


def export_settings(spec: OptimizedModelSpec) -> dict[str, Any]:
    """Everything besides the model that changes the exported graph (part of its cache key)."""
    return {
        "opset": spec.opset,
        "inputs": [t.to_wire() for t in spec.inputs],
        "outputs": spec.outputs,
        "exporter": "torchscript" if _legacy(spec) else "dynamo",
        "torch": torch.__version__,
    }


def _legacy(spec: OptimizedModelSpec) -> bool:
    # The dynamo exporter traces Python modules; TorchScript archives go through the
    # TorchScript-based exporter, which is what they were written for.
    return spec.source.resolved_format() is SourceFormat.TORCHSCRIPT


def export_onnx(model: TorchModel, spec: OptimizedModelSpec, out: Path) -> None:
    """The module, called as `model.call` binds the spec's inputs (by name where the forward
    has names), exported with the spec's names on the graph's inputs, so ONNX Runtime is fed
    by name whatever order the spec lists them in."""
    # Batch 2, not 1: tracing at 1 lets the exporter specialise the batch axis to a constant.
    batched = spec.batched_inputs()
    batch = 2 if batched and all(t.dynamic_batch for t in batched) else spec.batch_sizes[0]
    feeds = model.feeds(spec, batch, seed=1, lengths=trace_lengths(spec, batch))
    args, kwargs = model.call.split({t.name: torch.from_numpy(feeds[t.name]) for t in spec.inputs})
    common: dict[str, Any] = {
        "kwargs": kwargs,
        # The graph's inputs come in the order the call flattens them: by position, then by
        # keyword. Naming them in that order gives each its own name.
        "input_names": list(model.call.order),
        "output_names": spec.outputs,
        "opset_version": spec.opset,
    }
    try:
        # The exporter narrates its steps on stdout; keep the CLI's output to our own table.
        with contextlib.redirect_stdout(io.StringIO()):
            if _legacy(spec):
                _export_scripted(model, spec, args, out, common)
            else:
                shapes = call_shapes(model, export_dims(spec, batch_max=4096))
                torch.onnx.export(
                    model.module,
                    args,
                    str(out),
                    dynamic_shapes=shapes,
                    dynamo=True,
                    external_data=False,
                    **common,
                )
    except Exception as exc:
        raise KilnInputError(
            "spec.source", f"the ONNX exporter cannot handle this model: {root_cause(exc)}"
        ) from None


def _export_scripted(
    model: TorchModel, spec: OptimizedModelSpec, args: Any, out: Path, common: dict[str, Any]
) -> None:
    """A TorchScript archive through the TorchScript-based exporter. That exporter cannot
    trace a loaded archive behind a Python module (`SpecOutputs`), so the archive is exported
    with every output it returns, in its order, and the graph's outputs are then cut to the
    spec's, in the spec's order, under the spec's names."""
    selected = model.module if isinstance(model.module, SpecOutputs) else None
    module = selected.module if selected is not None else model.module
    returned = list(selected.returned) if selected is not None else []
    names = [f"kiln_output_{i}" for i in range(len(returned))] or spec.outputs
    axes = {t.name: named_axes(t) for t in spec.inputs if named_axes(t)}
    if spec.merges_requests:  # outputs batched on axis 0 like every input
        axes |= {o: {0: BATCH_DIM} for o in names}
    options = {**common, "output_names": names}
    torch.onnx.export(module, args, str(out), dynamic_axes=axes, dynamo=False, **options)
    if selected is not None:
        by_path = dict(zip(returned, names, strict=True))
        keep_outputs(out, [by_path[p] for p in selected.paths], spec.outputs)


def keep_outputs(path: Path, exported: list[str], spec_names: list[str]) -> None:
    """Only the graph outputs `exported`, in that order, renamed to `spec_names`."""
    model = onnx.load(str(path))
    graph = model.graph
    rename = dict(zip(exported, spec_names, strict=True))
    outputs = {o.name: o for o in graph.output}
    kept = [outputs[name] for name in exported]
    for node in graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
    for value in kept:
        value.name = rename[value.name]
    del graph.output[:]
    graph.output.extend(kept)
    onnx.save(model, str(path))


def call_shapes(model: TorchModel, by_name: dict[str, dict[int, Any]]) -> Any:
    """torch.export's dynamic shapes in the form of the module's forward: keyed by argument
    names, which are the inputs' names, or, behind `SpecOutputs` (`forward(*args, **kwargs)`),
    as that forward's two arguments."""
    if not isinstance(model.module, SpecOutputs):
        return by_name
    shapes: dict[str, Any] = {"args": tuple(by_name[n] or None for n in model.call.positional)}
    if model.call.keyword:  # torch.export binds no `kwargs` entry when none are passed
        shapes["kwargs"] = {n: by_name[n] or None for n in model.call.keyword}
    return shapes


def named_axes(tensor: TensorSpec) -> dict[int, str]:
    """The input's dynamic axes by ONNX dimension name: inputs that share a name share it."""
    axes = {axis: name for axis, (name, _) in tensor.axes().items()}
    if tensor.batch_axis is None or not tensor.dynamic_batch:
        return axes
    return {tensor.batch_axis: BATCH_DIM, **axes}


def export_dims(spec: OptimizedModelSpec, batch_max: int | None) -> dict[str, dict[int, Any]]:
    """torch.export's dynamic shapes for each input: one `Dim` object per name, so axes that
    share a name are one symbol (an attention mask's length is its ids' length). No batch
    symbol where `batch_max` is None: the batch axis is then traced as the constant it is."""
    dims = {n: torch.export.Dim(n, min=d.min, max=d.max) for n, d in spec.dims().items()}
    if batch_max is not None:
        dims[BATCH_DIM] = torch.export.Dim(BATCH_DIM, min=1, max=batch_max)
    return {
        t.name: {axis: dims[name] for axis, name in named_axes(t).items() if name in dims}
        for t in spec.inputs
    }
