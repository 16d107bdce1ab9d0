"""Compile an exported program into an AOTInductor package. Run as a subprocess by the
builder:

    python -m kiln.runtime.aoti_build --program P.pt2 --package OUT.pt2 --threads N

so a crash inside Inductor or the C++ compiler is a FAILED candidate, not a dead builder. The
program is already on its device and in its precision (the builder exports it); this step only
compiles, for the device the program's tensors are on and this machine's CPU/GPU."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

# Part of every package's cache key. dynamic_threads: the kernels size their OpenMP teams and
# reduction buffers from the thread count at run time, not the build machine's, so a server
# with another CPU quota runs the same package correctly.
INDUCTOR_CONFIGS: dict[str, Any] = {"cpp.dynamic_threads": True}


def compile_package(program: Path, package: Path, threads: int) -> None:
    import torch
    from torch._inductor import aoti_compile_and_package

    from kiln.runtime.errors import load_exported

    torch.set_num_threads(threads)
    exported = load_exported(str(program))
    aoti_compile_and_package(
        exported, package_path=str(package), inductor_configs=dict(INDUCTOR_CONFIGS)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln.runtime.aoti_build", description=__doc__)
    parser.add_argument("--program", type=Path, required=True)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        compile_package(args.program, args.package, args.threads)
    except Exception as exc:  # reported to the parent as a FAILED candidate
        from kiln.runtime.errors import root_cause

        print(f"error: {type(exc).__name__}: {root_cause(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
