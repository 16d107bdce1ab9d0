"""The rules around AOTInductor packages: which CPU may load one, what a failed compile says,
and which torch may serve one."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch

from kiln.api.spec import Precision
from kiln.builder.aoti import CandidateBuildError, compile_failure, export_program
from kiln.builder.torch_source import TorchModel
from kiln.runtime.aoti_runner import incompatibility
from kiln.runtime.binding import Call
from kiln.runtime.cpu_isa import cpu_flags, missing_flags, required_flags
from kiln.serve.loading import torch_mismatch
from tests.fixtures.specs import minimal_spec

AVX512 = {
    "AOTI_DEVICE_KEY": "cpu",
    "AOTI_MACHINE": "x86_64",
    "AOTI_CPU_ISA": "AVX512 AVX512_VNNI AMX_TILE",
    "AOTI_COMPUTE_CAPABILITY": "",
}
SAPPHIRE_RAPIDS = frozenset(
    [
        "avx2",
        "fma",
        "avx512f",
        "avx512dq",
        "avx512vl",
        "avx512bw",
        "avx512_vnni",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    ]
)
ZEN3 = frozenset(["avx", "avx2", "fma", "f16c", "sse4_2"])


def test_isa_names_map_to_the_cpu_flags_their_code_needs() -> None:
    assert required_flags("AVX512") == {"avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"}
    assert "amx_int8" in required_flags("AVX512 AMX_TILE")
    assert required_flags("AVX512_VNNI") == {"avx512_vnni"}  # a name that is its own flag
    assert required_flags("INVALIDVECISA") == frozenset()  # scalar code runs anywhere
    assert missing_flags("AVX2", ZEN3) == []
    assert missing_flags("AVX512", ZEN3) == ["avx512bw", "avx512dq", "avx512f", "avx512vl"]
    assert missing_flags("AVX512", None) == []  # unreadable cpuinfo: cannot tell, says nothing


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(x86) == frozenset({"fpu", "avx2", "fma"})
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    assert cpu_flags(arm) == frozenset({"fp", "asimd", "sve"})
    assert cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("meta", "device", "flags", "capability", "expected"),
    [
        (AVX512, "cpu", SAPPHIRE_RAPIDS, None, None),
        (AVX512, "cpu", ZEN3, None, "this CPU lacks amx_bf16, amx_int8, amx_tile, avx512_vnni"),
        (AVX512, "cuda:0", SAPPHIRE_RAPIDS, "90", "compiled for device type cpu"),
        ({**AVX512, "AOTI_MACHINE": "aarch64"}, "cpu", SAPPHIRE_RAPIDS, None, "for aarch64"),
        (
            {**AVX512, "AOTI_DEVICE_KEY": "cuda", "AOTI_COMPUTE_CAPABILITY": "90"},
            "cuda:0",
            ZEN3,  # the CPU's instruction sets do not matter for a CUDA package
            "90",
            None,
        ),
        (
            {**AVX512, "AOTI_DEVICE_KEY": "cuda", "AOTI_COMPUTE_CAPABILITY": "90"},
            "cuda:0",
            ZEN3,
            "89",
            "compiled for GPU compute capability 90, this GPU has 89",
        ),
        ({**AVX512, "AOTI_DEVICE_KEY": "cuda"}, "cpu", SAPPHIRE_RAPIDS, None, "device type cuda"),
    ],
)
def test_a_package_loads_only_where_it_was_compiled_for(
    meta: dict[str, str],
    device: str,
    flags: frozenset[str],
    capability: str | None,
    expected: str | None,
) -> None:
    why = incompatibility(meta, device, "x86_64", flags, capability)
    if expected is None:
        assert why is None
    else:
        assert why is not None
        assert expected in why, why


def test_a_failed_compile_says_why_in_one_line() -> None:
    def proc(code: int, stderr: str) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], code, "", stderr)

    noisy = "W1125 warning\nTraceback...\nerror: InductorError: CppCompileError: bad\n"
    assert compile_failure(proc(1, noisy)) == "InductorError: CppCompileError: bad"
    killed = compile_failure(proc(-signal.SIGSEGV, "partial output"))
    assert killed == "the compiler process was killed by SIGSEGV"
    assert compile_failure(proc(3, "a\nb\nc\nd")) == "exited 3: b | c | d"


def test_packages_are_served_only_by_the_torch_release_they_were_compiled_with() -> None:
    assert torch_mismatch("2.15.0+cu132", "2.15.0+cpu") is None  # one release, two builds
    assert torch_mismatch(None, "2.15.0") is None  # a result without an environment
    assert torch_mismatch("2.14.1", "2.15.0") == (
        "compiled with torch 2.14.1, this server has torch 2.15.0"
    )


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x * 3


def test_a_model_torch_export_cannot_trace_is_a_build_error_naming_the_cause() -> None:
    spec = minimal_spec()
    by_position = Call(("x",))
    with pytest.raises(CandidateBuildError, match=r"torch.export cannot export this model: .*data"):
        export_program(TorchModel(DataDependent(), by_position), spec, "cpu", Precision.FP32)
    program = export_program(
        TorchModel(torch.nn.Linear(3, 2), by_position), spec, "cpu", Precision.FP32
    )
    # The batch axis is dynamic from 1 to the largest batch size, whatever the trace used.
    (batch,) = {str(r) for r in program.range_constraints.values()}
    assert batch == "VR[1, 4]"
