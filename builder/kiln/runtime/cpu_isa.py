"""The CPU instruction sets AOTInductor compiles for, and whether this CPU has them.

Inductor picks the widest vector ISA the build machine supports and compiles every kernel
for it (`-mavx512f ...`); the package then runs only on CPUs with those instructions, and on
one without them dies with SIGILL in the middle of a request. A package records the ISA it was
built for (`AOTI_CPU_ISA`, e.g. `AVX512 AVX512_VNNI AMX_TILE`); a server checks it against
/proc/cpuinfo before loading, which needs no compiler (torch's own check compiles probes)."""

from __future__ import annotations

from pathlib import Path

# ISA names as Inductor writes them -> the /proc/cpuinfo flags its compiler flags need.
# Names not listed are their own flag (e.g. `avx512_vnni`, `asimd`).
_FLAGS: dict[str, frozenset[str]] = {
    "avx512": frozenset({"avx512f", "avx512dq", "avx512vl", "avx512bw", "fma"}),
    "avx2": frozenset({"avx2", "fma"}),
    "amx_tile": frozenset({"amx_tile", "amx_bf16", "amx_int8"}),
    "neon": frozenset({"asimd"}),
    "sve256": frozenset({"sve"}),
    "vsx": frozenset(),
    "zvector": frozenset(),
    "invalidvecisa": frozenset(),  # scalar code: runs anywhere
    "": frozenset(),
}


def required_flags(isa: str) -> frozenset[str]:
    """`AVX512 AVX512_VNNI AMX_TILE` -> the CPU flags a package built for it needs."""
    needed: set[str] = set()
    for name in isa.lower().split():
        needed |= _FLAGS.get(name, frozenset({name}))
    return frozenset(needed)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """This CPU's flags (x86 `flags`, Arm `Features`), or None where /proc/cpuinfo is absent."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def missing_flags(isa: str, flags: frozenset[str] | None) -> list[str]:
    """The flags a package built for `isa` needs that this CPU lacks (none when the CPU's flags
    cannot be read: then the loader cannot tell, and says nothing)."""
    if flags is None:
        return []
    return sorted(required_flags(isa) - flags)


def build_isa() -> str:
    """The ISA Inductor compiles for on this machine (it probes with the C++ compiler)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa()).upper()


# The /proc/cpuinfo flags OpenVINO's CPU plugin picks kernels by.
_OPENVINO_FLAGS = (
    "avx2",
    "avx_vnni",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def openvino_isa(flags: frozenset[str] | None) -> str:
    """The vector instruction sets OpenVINO's kernels use on a CPU with `flags`, e.g.
    `avx2 avx512_bf16 avx512_vnni avx512f`; `unknown` where /proc/cpuinfo cannot be read."""
    if flags is None:
        return "unknown"
    return " ".join(sorted(f for f in _OPENVINO_FLAGS if f in flags)) or "none"


def bf16_units(flags: frozenset[str] | None) -> str | None:
    """The units that compute bf16 natively on this CPU (`AMX-BF16`, `AVX512-BF16`), or None:
    without them bf16 is converted to and from float32 around every op, slower than FP32."""
    if flags is None:
        return None
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None
