"""AOTInductor package runner: a `.pt2` compiled ahead of time for one device type, loaded
with no compiler and no recompilation. Before loading, the package's own metadata is checked
against this machine (device type, CPU architecture and instruction sets, GPU compute
capability), so a package built elsewhere is refused with a reason instead of crashing."""

from __future__ import annotations

import json
import logging
import platform
import zipfile
from pathlib import Path
from typing import Any

import torch

from kiln.runtime.binding import Call
from kiln.runtime.cpu_isa import cpu_flags, missing_flags
from kiln.runtime.torch_runner import TorchRunner

_METADATA_SUFFIX = "wrapper_metadata.json"


class IncompatiblePackageError(RuntimeError):
    """The package was compiled for another device type or CPU; loading it would fail or
    crash the process."""


def package_metadata(package: Path) -> dict[str, str]:
    """What Inductor recorded about the machine it compiled for (AOTI_DEVICE_KEY,
    AOTI_MACHINE, AOTI_CPU_ISA, AOTI_COMPUTE_CAPABILITY)."""
    try:
        with zipfile.ZipFile(package) as archive:
            name = next((n for n in archive.namelist() if n.endswith(_METADATA_SUFFIX)), None)
            if name is None:
                raise IncompatiblePackageError(f"{package}: not an AOTInductor package")
            data = json.loads(archive.read(name))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise IncompatiblePackageError(
            f"{package}: unreadable AOTInductor package: {exc}"
        ) from None
    return {str(k): str(v) for k, v in data.items()}


def incompatibility(
    meta: dict[str, str],
    device: str,
    machine: str,
    flags: frozenset[str] | None,
    capability: str | None,
) -> str | None:
    """Why a package with `meta` cannot run here, or None. Pure, so every rule is tested."""
    built_for = meta.get("AOTI_DEVICE_KEY", "")
    wanted = "cuda" if device.startswith("cuda") else "cpu"
    if built_for != wanted:
        return f"compiled for device type {built_for or '?'}, this runner is on {wanted}"
    if meta.get("AOTI_MACHINE", machine) != machine:
        return f"compiled for {meta['AOTI_MACHINE']}, this machine is {machine}"
    if wanted == "cpu":
        isa = meta.get("AOTI_CPU_ISA", "")
        lacking = missing_flags(isa, flags)
        if lacking:
            return (
                f"compiled for CPU instruction sets {isa}; this CPU lacks {', '.join(lacking)} "
                "(build it on a node of this CPU type)"
            )
    built_cc = meta.get("AOTI_COMPUTE_CAPABILITY", "")
    if wanted == "cuda" and built_cc and capability is not None and built_cc != capability:
        return f"compiled for GPU compute capability {built_cc}, this GPU has {capability}"
    return None


def _capability(device: str) -> str | None:
    if not device.startswith("cuda"):
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    major, minor = torch.cuda.get_device_capability(index)
    return f"{major}{minor}"


def check_package(package: Path, device: str) -> None:
    meta = package_metadata(package)
    # Asked of the GPU only for a CUDA package on a CUDA runner (it initialises CUDA).
    on_gpu = device.startswith("cuda") and meta.get("AOTI_DEVICE_KEY") == "cuda"
    capability = _capability(device) if on_gpu else None
    why = incompatibility(meta, device, platform.machine(), cpu_flags(), capability)
    if why is not None:
        raise IncompatiblePackageError(f"{package.name}: {why}")


def _load(package: Path, device: str) -> Any:
    index = int(device.split(":")[1]) if ":" in device else -1
    # Without a C++ compiler (a server image), torch's own device check cannot probe the CPU
    # and falls back to the same loader with a misleading "outdated pt2 file" warning; the
    # check above has already done that job without one.
    logger = logging.getLogger("torch._inductor.package.package")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return torch._inductor.aoti_load_package(str(package), device_index=index)
    finally:
        logger.setLevel(level)


class AotiRunner(TorchRunner):
    """Runs like the PyTorch runners (the same staging and output copies), on the package."""

    def __init__(
        self,
        name: str,
        package: Path,
        input_names: list[str],
        device: str,
        threads: int | None = None,
    ) -> None:
        check_package(package, device)
        # Every package takes the spec's inputs by position, in the spec's order: the builder
        # exports it so, whatever order the forward declares.
        super().__init__(name, _load(package, device), Call(tuple(input_names)), device)
        self.threads = threads

    def run(self) -> None:
        # The compiled kernels size their OpenMP teams from the calling thread's setting; a
        # server runs inference on a worker thread that would otherwise use every core.
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        super().run()
