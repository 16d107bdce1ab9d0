"""Stage: export a PyTorch module to ONNX with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import BATCH_DIM, OptimizedModelSpec, SourceFormat, TensorSpec
from kiln.builder.feeds import trace_lengths
from kiln.builder.onnx_model import constant_initializer
from kiln.builder.outputs import SpecOutputs
from kiln.builder.torch_source import SpecOrder, TorchModel
from kiln.runtime.errors import root_cause


def export_settings(spec: OptimizedModelSpec) -> dict[str, Any]:
    """Everything besides the model that changes the exported graph (part of its cache key)."""
    return {
        "opset": spec.opset,
        "inputs": [t.to_wire() for t in spec.inputs],
        "outputs": spec.outputs,
        **({"constants": [c.to_wire() for c in spec.constants]} if spec.constants else {}),
        "exporter": "torchscript" if _legacy(spec) else "dynamo",
        "torch": torch.__version__,
    }


def _legacy(spec: OptimizedModelSpec) -> bool:
    # The dynamo exporter traces Python modules; TorchScript archives go through the
    # TorchScript-based exporter, which is what they were written for.
    return spec.source.resolved_format() is SourceFormat.TORCHSCRIPT


def export_onnx(model: TorchModel, spec: OptimizedModelSpec, out: Path) -> str | None:
    """The module, called as `model.call` binds the spec's inputs (by name where the forward
    has names), exported with the spec's names on the graph's inputs, so ONNX Runtime is fed
    by name whatever order the spec lists them in. A Python module goes through the dynamo
    exporter, and where that fails, through the TorchScript-based one (T5's attention views
    a transposed tensor, which dynamo's symbolic shapes refuse and a trace does not): the
    note says so. The parity check that follows judges either export."""
    # Batch 2, not 1: tracing at 1 lets the exporter specialise the batch axis to a constant.
    batched = spec.batched_inputs()
    batch = 2 if batched and all(t.dynamic_batch for t in batched) else spec.batch_sizes[0]
    feeds = model.feeds(spec, batch, seed=1, lengths=trace_lengths(spec, batch))
    tensors = {t.name: torch.from_numpy(feeds[t.name]) for t in spec.inputs}
    # The exporter narrates its steps on stdout; keep the CLI's output to our own table.
    with contextlib.redirect_stdout(io.StringIO()):
        if _legacy(spec):
            _exported_or_refused(lambda: _export_archive(model, spec, tensors, out))
            return None
        try:
            _export_dynamo(model, spec, tensors, out)
            return None
        except Exception as exc:
            dynamo = root_cause(exc)
        _exported_or_refused(
            lambda: _export_traced(model, spec, tensors, out), f"{dynamo}; and the traced: "
        )
    return f"the dynamo exporter failed ({dynamo}); exported with the TorchScript-based exporter"


def _exported_or_refused(export: Callable[[], None], before: str = "") -> None:
    try:
        export()
    except Exception as exc:
        raise KilnInputError(
            "spec.source",
            f"the ONNX exporter cannot handle this model: {before}{root_cause(exc)}",
        ) from None


def _common(model: TorchModel, spec: OptimizedModelSpec, kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        "kwargs": kwargs,
        # The graph's inputs come in the order the call flattens them: by position, then by
        # keyword. Naming them in that order gives each its own name.
        "input_names": list(model.call.order),
        "output_names": spec.outputs,
        "opset_version": spec.opset,
    }


def _export_archive(
    model: TorchModel, spec: OptimizedModelSpec, tensors: dict[str, Any], out: Path
) -> None:
    # A TorchScript archive takes its constants as graph inputs (a Python int too); they are
    # named here and folded into the graph after.
    args, kwargs = model.call.split(tensors)
    names = list(model.call.positional + model.call.keyword)
    _export_scripted(model, spec, args, out, {**_common(model, spec, kwargs), "input_names": names})
    fold_constants(out, dict(model.call.constants))


def _export_dynamo(
    model: TorchModel, spec: OptimizedModelSpec, tensors: dict[str, Any], out: Path
) -> None:
    by_name = export_dims(spec, batch_max=4096)
    if model.call.constants:
        # Behind SpecOrder the constants are the call's own values: a Python int is traced
        # as the constant it is, a tensor becomes an initializer.
        order = list(model.call.order)
        module: Any = SpecOrder(model.module, model.call, order)
        args: tuple[Any, ...] = tuple(tensors[n] for n in order)
        kwargs: dict[str, Any] = {}
        shapes: Any = {"args": tuple(by_name[n] or None for n in order)}
    else:
        module = model.module
        args, kwargs = model.call.split(tensors)
        shapes = call_shapes(model, by_name)
    torch.onnx.export(
        module,
        args,
        str(out),
        dynamic_shapes=shapes,
        dynamo=True,
        external_data=False,
        **_common(model, spec, kwargs),
    )


def _export_traced(
    model: TorchModel, spec: OptimizedModelSpec, tensors: dict[str, Any], out: Path
) -> None:
    """The TorchScript-based exporter on a trace of the module behind SpecOrder (inputs by
    position in the graph's order, constants its own), each input's dynamic axes named."""
    order = list(model.call.order)
    axes = {t.name: named_axes(t) for t in spec.inputs if named_axes(t)}
    if spec.merges_requests:  # outputs batched on axis 0 like every input
        axes |= {o: {0: BATCH_DIM} for o in spec.outputs}
    torch.onnx.export(
        SpecOrder(model.module, model.call, order),
        tuple(tensors[n] for n in order),
        str(out),
        input_names=order,
        output_names=spec.outputs,
        dynamic_axes=axes,
        opset_version=spec.opset,
        dynamo=False,
    )


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


def fold_constants(path: Path, constants: dict[str, Any]) -> None:
    """The graph inputs named like the spec's constants become initializers of their value,
    in the input's own type and rank (a TorchScript exporter may make a Python int an input
    of rank 0 or 1). A constant the graph does not take (the exporter folded it) is left."""
    if not constants:
        return
    model = onnx.load(str(path))
    graph = model.graph
    taken = {i.name: i for i in graph.input if i.name in constants}
    for name, graph_input in taken.items():
        graph.initializer.append(constant_initializer(graph_input, constants[name]))
    kept = [i for i in graph.input if i.name not in taken]
    del graph.input[:]
    graph.input.extend(kept)
    onnx.save(model, str(path))


def keep_outputs(path: Path, exported: list[str], spec_names: list[str]) -> None:
    """Only the graph outputs `exported`, in that order, renamed to `spec_names`."""
    model = onnx.load(str(path))
    graph = model.graph
    rename = dict(zip(exported, spec_names, strict=True))
    outputs = {o.name: o for o in graph.output}
    kept = [outputs[name] for name in exported]
    _rename_everywhere(graph, rename)
    for value in kept:
        value.name = rename[value.name]
    del graph.output[:]
    graph.output.extend(kept)
    onnx.save(model, str(path))


def _rename_everywhere(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Every use of a tensor under its new name: where nodes make it, where nodes read it (a
    BERT's pooler reads its last hidden state), and in the subgraphs of If and Loop nodes,
    which may read the outer graph's tensors by name."""
    for node in graph.node:
        node.output[:] = [rename.get(o, o) for o in node.output]
        node.input[:] = [rename.get(i, i) for i in node.input]
        for attribute in node.attribute:
            for subgraph in [attribute.g, *attribute.graphs]:
                _rename_everywhere(subgraph, rename)


def call_shapes(model: TorchModel, by_name: dict[str, dict[int, Any]]) -> Any:
    """torch.export's dynamic shapes in the form of the module's forward: keyed by argument
    names, which are the inputs' names, or, behind `SpecOutputs` (`forward(*args, **kwargs)`),
    as that forward's two arguments."""
    if not isinstance(model.module, SpecOutputs):
        return by_name
    shapes: dict[str, Any] = {}
    # torch.export binds no `args` entry when nothing goes by position (a program traced
    # with keywords only), and no `kwargs` entry when nothing goes by keyword.
    if model.call.positional:
        shapes["args"] = tuple(by_name.get(n) or None for n in model.call.positional)
    if model.call.keyword:
        shapes["kwargs"] = {n: by_name.get(n) or None for n in model.call.keyword}
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
