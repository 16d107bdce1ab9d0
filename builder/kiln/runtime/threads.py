"""How many CPU threads a runtime may really use here, and where that number came from.

A pod with a CPU limit runs under a CFS quota while `os.cpu_count()` still reports every core
of the node: runtimes sized to the node then oversubscribe the quota, get throttled, and time
as noise. So the count comes from the cgroup's quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`),
else the CPU affinity mask, and the benchmark and the server apply it alike to PyTorch and
ONNX Runtime."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class ThreadBudget:
    count: int
    source: str  # in words, for the status: "cgroup cpu.max 150000/100000", ...


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` ("max 100000" or "150000 100000"); None: no
    quota."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota_text: str, period_text: str) -> float | None:
    """CPUs granted by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: no quota)."""
    quota, period = int(quota_text.strip()), int(period_text.strip())
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None


def cpu_quota(root: Path = _CGROUP) -> tuple[float, str] | None:
    """(CPUs, where from) of this cgroup's CPU quota, or None when there is none. Inside a
    container the cgroup namespace puts the pod's own cgroup at the root of the mount."""
    text = _read(root / "cpu.max")
    if text is not None:
        try:
            cpus = parse_cpu_max(text)
        except ValueError:
            cpus = None
        return (cpus, f"cgroup cpu.max {text.strip().replace(' ', '/')}") if cpus else None
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = (
            _read(root / folder / "cpu.cfs_quota_us"),
            _read(root / folder / "cpu.cfs_period_us"),
        )
        if quota is None or period is None:
            continue
        try:
            cpus = parse_cfs(quota, period)
        except ValueError:
            return None
        where = f"cgroup cpu.cfs_quota_us {quota.strip()}/{period.strip()}"
        return (cpus, where) if cpus else None
    return None


def affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def available_threads(override: int | None = None, root: Path = _CGROUP) -> ThreadBudget:
    """The spec's count if set; else the quota rounded down (a 1.5-CPU quota runs one thread
    unthrottled, two threads throttled), never more than the CPUs this process may run on."""
    if override is not None:
        return ThreadBudget(override, "spec.benchmark.threads")
    cpus = affinity()
    quota = cpu_quota(root)
    if quota is not None and quota[0] < cpus:
        return ThreadBudget(max(1, math.floor(quota[0])), quota[1])
    return ThreadBudget(cpus, f"CPU affinity ({cpus} CPUs)")


def apply_torch_threads(count: int) -> None:
    """PyTorch intra- and inter-op pools. The inter-op pool can be sized only once per
    process, before it is first used; a second call keeps the first size."""
    import torch

    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(count)


def schedulers(environ: Mapping[str, str]) -> str:
    """How each CPU runtime's pool schedules and waits, in words for the status: what decides
    how gracefully it shares a node with other work (benchmarks/shared_node.py measures each).
    The OpenMP wait policy is read from the environment (the pod's), as libgomp reads it."""
    policy = environ.get("OMP_WAIT_POLICY", "").strip().upper()
    omp = f"OMP_WAIT_POLICY={policy}" if policy else "waits spinning (libgomp's default)"
    return (
        f"PyTorch and AOTInductor: OpenMP, {omp}; ONNX Runtime: its own intra-op pool, "
        "spinning off, 1 inter-op thread; OpenVINO: TBB, 1 stream, threads unpinned"
    )
