"""`make gpu-dry-run`: the core device call, exactly as pasted into the device tool, run here on
the CPU with KILN_GPU_DRY_RUN=1, to prove it fits before a lease is spent on it.

1. The kit is built if absent (`make gpu-kit`).
2. A Python 3.12 venv is made like the device's image (.kiln/gpu-device-venv): the device
   packages Kiln's closure relies on (the kit's plan.json names them), at the versions
   device-packages.txt records, plus the test runner the image has, and of what they need in
   turn only what the image has too. Kiln is not installed there.
3. What the device tool would send is copied into a scratch folder: the files git tracks or
   does not ignore, and the carried paths. Its size is printed and must be under 64 MiB.
4. The command runs there with $OUT set, its wall time printed, each step's line shown: the
   install and preparation steps are real, the GPU steps SKIPPED with the dry run's reason.

`--rehearse` (`make gpu-dry-run REHEARSE=1`) also runs the GPU steps, against the CPU target,
under the device's torch: what would break on the device for a reason that is not the GPU
shows here. It takes minutes on two cores; its budget is not the device's.

Needs a CPython 3.12 (`KILN_PY312`, else `python3.12` on PATH, else pyenv's 3.12) and the
package index for the venv's first build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.gpu.kit import build, read_device_packages

ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / ".gpu-kit"
VENV = ROOT / ".kiln" / "gpu-device-venv"
REPORT = ROOT / ".kiln" / "gpu-dry-run"  # what came back into $OUT, and report.json
LIMIT_MIB = 64
COMMAND = "python3 tests/gpu/on_device.py core $OUT"
CARRY = [".gpu-kit/wheels"]
TIMEOUT_S = 540  # the device call's timeout_s: the 465 s budget, the install's start, collect
RECIPE = 2  # how venv() makes the venv: a new recipe rebuilds it
RUNNER = ["pytest", "pytest-timeout", "pyyaml"]  # on the image; tests/gpu runs under them


def python312() -> str:
    """A CPython 3.12 that really runs (a pyenv shim on PATH may name one it cannot start)."""
    candidates = [os.environ.get("KILN_PY312"), shutil.which("python3.12")]
    pyenv = shutil.which("pyenv")
    if pyenv:
        found = subprocess.run([pyenv, "prefix", "3.12"], capture_output=True, text=True)
        if found.returncode == 0:
            prefix = Path(found.stdout.strip().splitlines()[-1])
            candidates.append(str(prefix / "bin" / "python3.12"))
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"],
            capture_output=True,
            text=True,
        )
        if probe.stdout.strip() == "True":
            return candidate
    raise SystemExit("error: no CPython 3.12 found: set KILN_PY312 to one (the device runs 3.12)")


def device_requirements() -> list[str]:
    """The device packages the kit trusts the device with, pinned where the version is known."""
    plan = json.loads((KIT / "wheels" / "plan.json").read_text())
    device = read_device_packages()
    names = sorted(set(plan["trustedToTheDevice"]) | set(RUNNER))
    return [f"{n}=={device[n]}" if device.get(n) else n for n in names]


def venv() -> Path:
    """The device-like venv, rebuilt when what it must hold changes."""
    wanted = [f"recipe-{RECIPE}", *device_requirements()]
    stamp = VENV / "requirements.txt"
    python = VENV / "bin" / "python3"
    if stamp.exists() and stamp.read_text().split() == wanted and python.exists():
        return VENV
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python312(), "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([*pip, "--dry-run", "--report", str(report), *wanted[1:]], check=True)
        resolved = json.loads(report.read_text())["install"]
    # Only what the image has: a newer release of one of its packages may need something the
    # image lacks (typer's newest needs pydantic), which would hide a gap the device has.
    device = read_device_packages()
    pins = [
        f"{m['name']}=={m['version']}"
        for m in (r["metadata"] for r in resolved)
        if canonicalize_name(m["name"]) in device
    ]
    subprocess.run([*pip, "--no-deps", *pins], check=True)
    stamp.write_text("\n".join(wanted) + "\n")
    return VENV


def travelling_files() -> list[Path]:
    """What the device tool sends: tracked and untracked-not-ignored files, and the carry."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [ROOT / name.decode() for name in listed if name]
    for carried in CARRY:
        files += [p for p in (ROOT / carried).rglob("*") if p.is_file()]
    return [f for f in files if f.is_file()]


def copy_tree(files: list[Path], dest: Path) -> int:
    size = 0
    for source in files:
        target = dest / source.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        size += source.stat().st_size
    return size


def main() -> int:
    rehearse = "--rehearse" in sys.argv[1:]
    if not (KIT / "wheels").is_dir():
        build(KIT)
    bin_dir = venv() / "bin"
    with tempfile.TemporaryDirectory(prefix="kiln-gpu-dry-") as scratch:
        tree, out = Path(scratch) / "tree", Path(scratch) / "out"
        size = copy_tree(travelling_files(), tree)
        out.mkdir()
        print(f"the call sends {size / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB), carry {CARRY}")
        environ = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "OUT": str(out),
            "KILN_GPU_DRY_RUN": "1",
            "KILN_GPU_SITE": str(Path(scratch) / "site"),
            "KILN_GPU_RESULTS": str(Path(scratch) / "results"),
            "PYTHONPATH": "",
            **({"KILN_GPU_REHEARSE": "1", "KILN_GPU_BUDGET_S": "3600"} if rehearse else {}),
        }
        environ.pop("VIRTUAL_ENV", None)
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", COMMAND], cwd=tree, env=environ, timeout=3600 if rehearse else TIMEOUT_S
        )
        took = time.monotonic() - started
        returned = sorted(p.name for p in out.iterdir())
        shutil.rmtree(REPORT, ignore_errors=True)
        shutil.copytree(out, REPORT)
    report = {"sentMiB": round(size / 2**20, 1), "seconds": round(took, 1), "exit": proc.returncode}
    (REPORT / "report.json").write_text(json.dumps({**report, "returned": returned}, indent=2))
    print(
        f"`{COMMAND}` ran {took:.0f} s here (timeout_s {TIMEOUT_S}), exit {proc.returncode}, "
        f"sent {size / 2**20:.1f} MiB, brought back {returned}; details in {REPORT}"
    )
    ok = proc.returncode == 0 and size < LIMIT_MIB * 2**20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
