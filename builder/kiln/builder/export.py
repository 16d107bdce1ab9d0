"""Stage: export a PyTorch module to ONNX with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec, SourceFormat
from kiln.builder.feeds import random_feeds
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
    batch = 2 if all(t.dynamic_batch for t in spec.inputs) else spec.batch_sizes[0]
    feeds = random_feeds(spec.inputs, batch, seed=1)
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
                axes = {t.name: {0: "batch"} for t in spec.inputs if t.dynamic_batch}
                axes |= {o: {0: "batch"} for o in spec.outputs}
                torch.onnx.export(
                    model.module, args, str(out), dynamic_axes=axes, dynamo=False, **common
                )
            else:
                dim = torch.export.Dim("batch", min=1, max=4096)
                # Keyed by the forward's argument names, which are the inputs' names.
                shapes = {t.name: ({0: dim} if t.dynamic_batch else {}) for t in spec.inputs}
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
