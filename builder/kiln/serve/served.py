"""What one server serves, and the one way both protocols (REST and gRPC) run it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.api.spec import TensorSpec, batch_size_of
from kiln.runtime.base import Array, Feeds
from kiln.serve.batching import Batcher
from kiln.serve.metrics import Metrics


@dataclass
class ModelInfo:
    name: str
    version: str  # the engine's result key: what exactly is being served
    platform: str  # e.g. onnxruntime-cpu-fp32
    inputs: list[TensorSpec]
    outputs: list[str]
    max_batch: int
    # name, datatype and shape of each output, as the engine answered its warm-up
    output_meta: list[dict[str, Any]] | None = None
    # Several requests may run as one batch (every input batched on axis 0: the spec's
    # `merges_requests`); otherwise each request runs on its own.
    merges: bool = True
    # The spec's constants: arguments built into the engine, which requests do not carry.
    constants: dict[str, int | float] = field(default_factory=dict)

    def outputs_metadata(self) -> list[dict[str, Any]]:
        return self.output_meta or [
            {"name": o, "datatype": "FP32", "shape": [-1]} for o in self.outputs
        ]


class EngineFailedError(RuntimeError):
    """The runtime failed on a valid request: a server error; the server stays up."""


async def run_engine(
    info: ModelInfo, batcher: Batcher, metrics: Metrics, feeds: Feeds, wanted: list[str]
) -> list[tuple[str, Array]]:
    """The `wanted` outputs, in that order, from one trip through the batcher."""
    metrics.queue_depth.inc()
    try:
        size = batch_size_of(info.inputs, {n: a.shape for n, a in feeds.items()})
        outputs = await batcher.submit(feeds, size)
    except Exception as exc:
        raise EngineFailedError(f"inference failed: {type(exc).__name__}: {exc}") from exc
    finally:
        metrics.queue_depth.dec()
    by_name = dict(zip(info.outputs, outputs, strict=True))
    return [(name, by_name[name]) for name in wanted]
