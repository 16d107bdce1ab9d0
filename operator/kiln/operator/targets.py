"""Which targets a resource gets in this cluster (pure): the GPU types on the nodes, filtered by
the spec, plus a CPU target when asked for or when there is no GPU node at all."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kiln.api.spec import Targets

DEFAULT_GPU_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class TargetIntent:
    name: str  # "cpu" or the GPU product label value
    device: str  # "cpu" or "cuda"
    stale: bool = False  # built before, but no node of this type is left


def desired_targets(
    targets: Targets, present: Mapping[str, int], previously: Iterable[str]
) -> tuple[list[TargetIntent], list[str]]:
    """(targets, spec.targets.gpuTypes entries that no node has)."""
    wanted = [t for t in present if not targets.gpu_types or t in targets.gpu_types]
    intents = [TargetIntent(t, "cuda") for t in wanted]
    if targets.cpu or not present:
        intents.insert(0, TargetIntent("cpu", "cpu"))
    known = {i.name for i in intents}
    for name in sorted(set(previously) - known - {"cpu"}):
        if not targets.gpu_types or name in targets.gpu_types:
            intents.append(TargetIntent(name, "cuda", stale=True))
    missing = [t for t in targets.gpu_types if t not in present]
    return intents, missing
