"""AOTInductor packages for one device type: the key, the exported program a package is
compiled from, the stored package, and the compile in a subprocess (a crash inside Inductor or
the C++ compiler is a FAILED candidate, not a dead builder).

Every package takes the spec's inputs by position, in the spec's order (what the runners and
`kiln serve` pass). The program is the source's own `torch.export` program where it can be used
as it is (an FP32 package from a `.pt2` source that takes the inputs in that order); otherwise
the module is exported here behind `SpecOrder`, with the spec's dynamic batch axis (min 1, max
the largest batch size), on the target's device, and for FP16 and bf16 wrapped so the package
takes and returns the spec's dtypes and computes in that precision inside."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from kiln.api.keys import cache_key
from kiln.api.spec import OptimizedModelSpec, Precision, SourceFormat
from kiln.builder.candidates import CandidatePlan
from kiln.builder.context import BuildContext
from kiln.builder.export import export_dims
from kiln.builder.feeds import trace_lengths
from kiln.builder.prepare import ModelArtifact, Prepared
from kiln.builder.torch_source import SpecOrder, TorchModel
from kiln.runtime.aoti_build import INDUCTOR_CONFIGS
from kiln.runtime.binding import Call
from kiln.runtime.cpu_isa import build_isa
from kiln.runtime.errors import root_cause
from kiln.runtime.torch_runner import flatten_outputs

PACKAGE_FILE = "model.pt2"
PROGRAM_FILE = "program.pt2"
COMPILE_TIMEOUT_S = 3600


class CandidateBuildError(RuntimeError):
    """A candidate cannot be built from this model (its message is the whole reason)."""


def uses_source_program(
    spec: OptimizedModelSpec, plan: CandidatePlan, model: TorchModel | None
) -> bool:
    """An FP32 package compiles a `.pt2` source's own program when that program already takes
    the spec's inputs as every package must (all by position, in the spec's order) and returns
    the spec's outputs as they are (flat, in the spec's order: no custom output types, which
    the compile subprocess could not load)."""
    in_spec_order = Call(tuple(t.name for t in spec.inputs))
    return (
        spec.source.resolved_format() is SourceFormat.EXPORTED
        and plan.precision is Precision.FP32
        and model is not None
        and model.call == in_spec_order
        and model.own_outputs
    )


def program_settings(
    spec: OptimizedModelSpec, plan: CandidatePlan, model: TorchModel | None
) -> dict[str, Any]:
    """What the compiled program depends on besides the source's bytes."""
    if uses_source_program(spec, plan, model):
        return {"program": "source"}
    return {
        "program": "export",
        "inputs": [t.to_wire() for t in spec.inputs],
        "outputs": spec.outputs,  # the program returns these, in this order
        "maxBatch": spec.batch_sizes[-1],
    }


def target_isa(device: str) -> str | None:
    """The CPU instruction sets a CPU package is compiled for (part of its key); None on CUDA,
    where the kernels are compiled for the GPU and the GPU type is in the key."""
    if device != "cpu":
        return None
    try:
        return build_isa()
    except Exception as exc:  # no working compiler: the candidate is skipped for that anyway
        return f"unknown ({type(exc).__name__})"


def package_key(
    spec: OptimizedModelSpec,
    plan: CandidatePlan,
    prepared: Prepared,
    device_type: str,
    threads: int,
) -> str:
    return cache_key(
        "aoti",
        source=prepared.source.digest,
        settings=program_settings(spec, plan, prepared.model),
        precision=plan.precision.value,
        device=device_type,
        isa=target_isa(plan.device),
        torch=torch.__version__,
        cuda=torch.version.cuda if plan.device == "cuda" else None,
        inductor=INDUCTOR_CONFIGS,
        # Inductor splits loops for the build's thread count (the package runs correctly at
        # any count; it is fastest at this one).
        threads=threads,
    )


def aoti_package(
    ctx: BuildContext, plan: CandidatePlan, prepared: Prepared, device_type: str, threads: int
) -> ModelArtifact:
    """The stored package for this program, device type and CPU, or a new one compiled and
    published (manifest last: a compile that dies leaves nothing marked built)."""
    key = package_key(ctx.spec, plan, prepared, device_type, threads)
    uri = ctx.artifacts.location(key, PACKAGE_FILE).uri
    if not ctx.force and ctx.artifacts.manifest(key) is not None:
        return ModelArtifact(key, ctx.artifacts.fetch(key, PACKAGE_FILE), uri, cached=True)
    work = ctx.work_dir / key
    work.mkdir(parents=True, exist_ok=True)
    program = _program(ctx.spec, plan, prepared, work / PROGRAM_FILE)
    package = work / PACKAGE_FILE
    package.unlink(missing_ok=True)
    compile_in_subprocess(program, package, threads)
    meta = {"stage": "aotinductor", "device": device_type, "torch": torch.__version__}
    ctx.artifacts.publish(key, {PACKAGE_FILE: package}, {**meta, "isa": target_isa(plan.device)})
    return ModelArtifact(key, package, uri, cached=False)


def _program(spec: OptimizedModelSpec, plan: CandidatePlan, prepared: Prepared, out: Path) -> Path:
    device = "cuda:0" if plan.device == "cuda" else "cpu"
    if uses_source_program(spec, plan, prepared.model):
        if device == "cpu":
            return prepared.source.path
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(torch.export.load(str(prepared.source.path)), device)
    else:
        if prepared.model is None:
            raise CandidateBuildError("no PyTorch module to export")
        program = export_program(prepared.model, spec, device, plan.precision)
    torch.export.save(program, str(out))
    return out


REDUCED = {Precision.FP16: torch.float16, Precision.BF16: torch.bfloat16}


class ReducedPrecision(torch.nn.Module):
    """Runs `module` in FP16 or bf16 behind the spec's dtypes: floating inputs are cast on the
    way in, outputs to float32 on the way out, so the package serves the same contract."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.module = module.to(dtype)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cast = [a.to(self.dtype) if a.is_floating_point() else a for a in args]
        return tuple(t.float() for t in flatten_outputs(self.module(*cast)))


def export_program(
    model: TorchModel, spec: OptimizedModelSpec, device: str, precision: Precision
) -> torch.export.ExportedProgram:
    """torch.export of the module behind `SpecOrder`, with the batch axis dynamic from 1 to
    the largest batch size and every other dynamic axis over its range. Traced at batch 2
    where it can be: at 1, export specialises the axis to a constant."""
    largest = spec.batch_sizes[-1]
    dynamic = spec.batch_varies
    batch = 2 if dynamic else spec.batch_sizes[0]
    feeds = model.feeds(spec, batch, seed=1, lengths=trace_lengths(spec, batch))
    names = [t.name for t in spec.inputs]
    args = tuple(torch.from_numpy(feeds[n]).to(device) for n in names)
    by_name = export_dims(spec, batch_max=largest if dynamic else None)
    # One entry, for SpecOrder's *args: a tuple with each input's shape.
    shapes = (tuple(by_name[n] or None for n in names),)
    call = model.call.converted(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
    program: torch.nn.Module = SpecOrder(copy.deepcopy(model.module).to(device), call, names)
    if precision in REDUCED:
        program = ReducedPrecision(program, REDUCED[precision])
    try:
        return torch.export.export(program, args, dynamic_shapes=shapes, strict=False)
    except Exception as exc:
        raise CandidateBuildError(
            f"torch.export cannot export this model: {root_cause(exc)}"
        ) from None


def compile_in_subprocess(program: Path, package: Path, threads: int) -> None:
    args = [sys.executable, "-m", "kiln.runtime.aoti_build"]
    args += ["--program", str(program), "--package", str(package), "--threads", str(threads)]
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, check=False, timeout=COMPILE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise CandidateBuildError(
            f"AOTInductor compile took longer than {COMPILE_TIMEOUT_S} s"
        ) from None
    if proc.returncode == 0 and package.is_file():
        return
    raise CandidateBuildError(f"AOTInductor compile failed: {compile_failure(proc)}")


def compile_failure(proc: subprocess.CompletedProcess[str]) -> str:
    """The subprocess's `error:` line, or how it died."""
    lines = (proc.stderr or "").strip().splitlines()
    reported = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if reported:
        return reported[-1]
    if proc.returncode < 0:
        return f"the compiler process was killed by {signal.Signals(-proc.returncode).name}"
    tail = " | ".join(lines[-3:]) or "no output"
    return f"exited {proc.returncode}: {tail}"
