"""The GPU tier on a lent GPU machine (tests/gpu/README.md). One device call does the core:

    python3 tests/gpu/on_device.py core $OUT      # carry .gpu-kit/wheels; timeout_s 540

installs the kit, reads the machine, makes the example, then runs in order of value, each
step time-boxed (tests/gpu/budget.py): `pytest tests/gpu`, `kiln optimize` of the example for
this GPU, `kiln serve` of that result checked against PyTorch on the GPU, and the runtime
benchmark at batch 1 and 8. `summary.json` and `logs.txt` are rewritten into $OUT after every
step, so a call cut off at its limit still brings back what had finished.

A longer lease can add ONNX Runtime CUDA, carried in parts of under 64 MiB, one call each:

    python3 tests/gpu/on_device.py join N         # append onnxruntime-gpu part N under /tmp
    python3 tests/gpu/on_device.py full $OUT      # the core with ONNX Runtime CUDA and INT8

`KILN_GPU_DRY_RUN=1` runs the same call on a machine without a GPU: every install and
preparation step is real, every GPU step SKIPPED with that reason (`make gpu-dry-run`).
`KILN_GPU_REHEARSE=1` (with the dry run) runs the GPU steps too, against the CPU target, to
prove them under the device's own torch before a lease (`make gpu-dry-run REHEARSE=1`).
`KILN_GPU_BUDGET_S` sets the seconds the steps share (default 465 for `core`, inside an
8-minute call; 570 for `full`).
Standard library only until the install step has run; nothing is faked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.gpu.budget import Step, StepState, fits, limit, skip_reason  # noqa: E402
from tests.gpu.collect import collect  # noqa: E402
from tests.gpu.parts import join_part  # noqa: E402

KIT = ROOT / ".gpu-kit"
JOINED = Path("/tmp/kiln-kit")
SITE = Path(os.environ.get("KILN_GPU_SITE", "/tmp/site"))  # the dry run uses its own
RESULTS = Path("/tmp/kiln-gpu")
PYTHON = sys.executable
EXAMPLE = ROOT / "examples" / "lipsync"
DRY_RUN = "KILN_GPU_DRY_RUN"
REHEARSE = "KILN_GPU_REHEARSE"
DEFAULT_BUDGET = {"core": 465.0, "full": 570.0}  # inside calls of 8 and 10 minutes

# In order of value; the boxes add up to the default budget (checked when the call starts).
CORE = [
    Step("install", 40, gpu=False),
    Step("probe", 15, needs="install", gpu=False),
    Step("example", 40, needs="install", gpu=False),
    Step("gpu-tests", 120, needs="install", gpu=False),  # pytest skips by itself without CUDA
    Step("optimize-lipsync", 150, needs="example"),
    Step("serve-lipsync", 40, needs="optimize-lipsync"),
    Step("benchmark", 60, needs="optimize-lipsync"),
]
FULL_EXTRA = [
    Step("tiny-model", 15, needs="install"),
    Step("optimize-tiny", 60, needs="tiny-model"),
    Step("serve-tiny", 30, needs="optimize-tiny"),
]


@dataclass
class Item:
    name: str
    state: StepState
    reason: str = ""
    seconds: float = 0.0
    limit: float = 0.0
    log: str = ""


def env() -> dict[str, str]:
    path = [str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "PYTHONUNBUFFERED": "1",
    }


def join(number: int) -> int:
    dest, complete = join_part(KIT / "ort", number, JOINED)
    print(f"{dest}: part {number} appended" + (", complete, SHA-256 matches" if complete else ""))
    return 0


def install_argv() -> list[str]:
    """tests/gpu/install.py: pip's resolver on the device picks what its packages lack."""
    if not (KIT / "wheels").is_dir():
        raise SystemExit(f"error: no wheels under {KIT / 'wheels'}: run `make gpu-kit` first")
    joined = [str(w) for w in sorted(JOINED.glob("*.whl"))]
    here = Path(__file__).resolve().parent
    return [PYTHON, str(here / "install.py"), str(KIT / "wheels"), str(SITE), *joined]


# What the machine is, and whether every Kiln module imports beside the device's own packages
# (a carried protobuf or grpcio that does not fit them shows here, before any GPU step).
PROBE = """
import importlib, json, os, platform, pkgutil, shutil, subprocess, sys, tempfile
from pathlib import Path
import torch
from kiln.runtime.devices import gpu_product_label
found = {"python": platform.python_version(), "torch": torch.__version__,
         "torchCuda": torch.version.cuda, "cpus": os.cpu_count(),
         "cudaAvailable": torch.cuda.is_available(),
         # AOTInductor compiles its wrapper with the host C++ compiler
         "tools": {t: shutil.which(t) for t in ("g++", "gcc", "nvcc", "ninja")}}
if found["cudaAvailable"]:
    props = torch.cuda.get_device_properties(0)
    found.update(name=props.name, productLabel=gpu_product_label(props.name),
                 capability=f"{props.major}.{props.minor}", memoryMiB=props.total_memory >> 20,
                 multiprocessors=props.multi_processor_count)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True)
    found["nvidiaSmi"] = smi.stdout.strip() or smi.stderr.strip()
failed, count = {}, 0
for top in ("kiln.api", "kiln.builder", "kiln.runtime", "kiln.storage", "kiln.cli", "kiln.serve"):
    for info in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        count += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed[info.name] = repr(exc)[:300]
from kiln.serve.grpc_protocol import compiled
compiled(Path(tempfile.mkdtemp()))
import google.protobuf, grpc, onnx, onnxruntime
found["versions"] = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "protobuf": google.protobuf.__version__, "grpcio": grpc.__version__,
                     "providers": onnxruntime.get_available_providers()}
found["imports"] = {"modules": count, "failed": failed}
print(json.dumps(found))
sys.exit(1 if failed else 0)
"""


def rehearsing() -> bool:
    """A dry run whose GPU steps run against the CPU target instead."""
    return os.environ.get(DRY_RUN) == "1" and os.environ.get(REHEARSE) == "1"


def cuda_reason() -> str:
    """Empty when PyTorch sees a CUDA device here (and this is no dry run), else why not."""
    if rehearsing():
        return ""
    if os.environ.get(DRY_RUN) == "1":
        return f"{DRY_RUN}=1: a dry run of the call, GPU steps are not run"
    probe = subprocess.run(
        [PYTHON, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    if probe.stdout.strip() == "True":
        return ""
    return "no CUDA device (torch.cuda.is_available() is False)" + (
        f": {probe.stderr.strip().splitlines()[-1]}" if probe.returncode else ""
    )


def spec_copy(source: Path, dest: Path, **changes: object) -> Path:
    """The example's spec with absolute URIs (it moves to another folder) and `changes`."""
    import yaml

    document = yaml.safe_load(source.read_text())
    spec = document["spec"]
    for where in (spec["source"], spec.get("calibration") or {}):
        if "uri" in where and "://" not in where["uri"]:
            where["uri"] = str((source.parent / where["uri"]).resolve())
    spec.update(changes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(document, sort_keys=False))
    return dest


def gpu_backends(with_ort: bool) -> list[str]:
    """The backends the device can run: ONNX Runtime only once onnxruntime-gpu is joined."""
    return ["pytorch", "aotinductor"] + (["onnxruntime"] if with_ort else [])


def gpu_spec(with_ort: bool) -> dict[str, object]:
    """What the device's copy of a spec changes: this GPU only (the CPU target would spend the
    lease on CPU compiles), the backends the device can run, short benchmark caps."""
    return {
        "backends": gpu_backends(with_ort),
        # bf16: Hopper computes it at FP16's rate without FP16's range (AOTInductor's only:
        # ONNX Runtime and TensorRT bf16 need a bf16 ONNX model Kiln does not build).
        "precisions": ["fp32", "fp16", "bf16"] + (["int8"] if with_ort else []),
        "targets": {"cpu": True} if rehearsing() else {"cpu": False, "gpuTypes": []},
        "benchmark": {"maxSeconds": 8},
    }


def commands(results: Path, with_ort: bool) -> dict[str, list[str]]:
    """The command of each step but install and probe (which `run_step` knows)."""
    here = Path(__file__).resolve().parent
    lipsync = results / "lipsync.yaml"
    store = ["--artifacts", str(results / "artifacts")]
    kiln = [PYTHON, "-m", "kiln.cli.main", "optimize"]
    pytest = [PYTHON, "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    tiny = results / "tiny"
    backends = ",".join(gpu_backends(with_ort))
    return {
        "example": [PYTHON, str(EXAMPLE / "make_example.py")],
        "gpu-tests": [*pytest, f"--junitxml={results / 'gpu-tests.xml'}"],
        "optimize-lipsync": [*kiln, str(lipsync), "-o", str(results / "lipsync"), *store],
        "serve-lipsync": [
            PYTHON,
            str(here / "serve_check.py"),
            str(results / "lipsync"),
            str(EXAMPLE / "data/lipsync.pt2"),
        ],
        "benchmark": [
            PYTHON,
            "benchmarks/runtime_speedup.py",
            str(lipsync),
            "--batch-sizes",
            "1",
            "8",
            "--seconds",
            "8",
            *store,
        ],
        "tiny-model": [PYTHON, str(here / "tiny_model.py"), str(tiny), backends],
        "optimize-tiny": [*kiln, str(tiny / "spec.yaml"), "-o", str(tiny / "out"), *store],
        "serve-tiny": [
            PYTHON,
            str(here / "serve_check.py"),
            str(tiny / "out"),
            str(tiny / "tiny.pt2"),
        ],
    }


GRACE = 10.0  # seconds between SIGINT (pytest writes its report) and SIGKILL


def execute(
    results: Path, name: str, argv: list[str], seconds: float, grace: float = GRACE
) -> Item:
    """Run one step in its own process group. When its time is up the group gets SIGINT
    (pytest still writes what ran, a server stops), then SIGKILL after a grace period, so a
    server or compiler it started goes with it and the step ends within `seconds`."""
    log = results / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env(), cwd=ROOT, start_new_session=True
        )
        code = _wait(proc, max(1.0, seconds - grace), grace)
    took = round(time.monotonic() - started, 1)
    tail = (log.read_text(errors="replace").strip().splitlines() or [""])[-1][:300]
    if code is None:
        return Item(
            name, StepState.FAILED, f"timed out after {took:.0f} s: {tail}", took, seconds, log.name
        )
    if code != 0:
        return Item(name, StepState.FAILED, f"exit {code}: {tail}", took, seconds, log.name)
    return Item(name, StepState.OK, "", took, seconds, log.name)


def _wait(proc: subprocess.Popen[bytes], seconds: float, grace: float) -> int | None:
    """The exit code, or None when the step had to be stopped."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return None


def pytest_item(item: Item, junit: Path) -> Item:
    """What pytest's report says: its counts join the reason. Every test skipped (a machine
    without CUDA) is SKIPPED with the first skip's reason, not OK."""
    if not junit.exists():
        return item
    root = ElementTree.parse(junit).getroot()
    suite = root.find("testsuite") if root.tag == "testsuites" else root
    if suite is None:
        return item
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    told = f"{passed} passed, {counts['failures'] + counts['errors']} failed, "
    told += f"{counts['skipped']} skipped"
    if item.state is StepState.OK and counts["tests"] and passed == 0:
        first = suite.find(".//skipped")
        why = first.get("message", "") if first is not None else ""
        return replace(
            item, state=StepState.SKIPPED, reason=f"all {counts['tests']} skipped: {why}"
        )
    return replace(item, reason=f"{told}; {item.reason}" if item.reason else told)


def prepare(results: Path, with_ort: bool) -> None:
    """The device's spec of the example (pyyaml is one of the device's own packages)."""
    changes = gpu_spec(with_ort)
    spec_copy(EXAMPLE / "optimizedmodel.yaml", results / "lipsync.yaml", **changes)


def run_step(results: Path, step: Step, seconds: float, with_ort: bool) -> Item:
    if step.name == "install":
        item = execute(results, step.name, install_argv(), seconds)
        if item.state == "OK":
            prepare(results, with_ort)
        return item
    if step.name == "probe":
        return execute(results, step.name, [PYTHON, "-c", PROBE], seconds)
    item = execute(results, step.name, commands(results, with_ort)[step.name], seconds)
    return pytest_item(item, results / "gpu-tests.xml") if step.name == "gpu-tests" else item


def probe_reading(results: Path) -> dict[str, object]:
    log = results / "probe.log"
    lines = log.read_text().strip().splitlines() if log.exists() else []
    try:
        found: dict[str, object] = json.loads(lines[-1]) if lines else {}
        return found
    except json.JSONDecodeError:
        return {"error": lines[-1]}


def call(out: Path, steps: list[Step], with_ort: bool) -> int:
    """One device call: every step in order within the budget, the summary into `out` after
    each. Exit 1 when a step FAILED."""
    mode = "full" if with_ort else "core"
    budget = float(os.environ.get("KILN_GPU_BUDGET_S", DEFAULT_BUDGET[mode]))
    if not fits(steps, budget):
        raise SystemExit(f"error: the steps' boxes exceed the budget of {budget:.0f} s")
    results = Path(os.environ.get("KILN_GPU_RESULTS", RESULTS))
    results.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done: list[Item] = []
    why_no_gpu: str | None = None
    summary: dict[str, object] = {"mode": mode, "budgetSeconds": budget}
    for index, step in enumerate(steps):
        seconds = limit(steps, index, budget - (time.monotonic() - started))
        if step.gpu and why_no_gpu is None:
            why_no_gpu = cuda_reason()
        states = {d.name: d.state for d in done}
        why = skip_reason(step, states, why_no_gpu or "", seconds)
        item = Item(step.name, StepState.SKIPPED, why, 0.0, seconds) if why else None
        done.append(item or run_step(results, step, seconds, with_ort))
        last = done[-1]
        print(f"{last.name:<18} {last.state:<8} {last.seconds:>6.1f}s  {last.reason}", flush=True)
        summary.update(
            dryRun=os.environ.get(DRY_RUN) == "1",
            rehearsal=rehearsing(),
            usedSeconds=round(time.monotonic() - started, 1),
            device=probe_reading(results),
            items=[asdict(d) for d in done],
        )
        collect(results, out, summary)
    return 1 if any(d.state is StepState.FAILED for d in done) else 0


def main(argv: list[str]) -> int:
    command, *rest = argv or ["help"]
    if command == "join":
        return join(int(rest[0]))
    if command == "core":
        return call(Path(rest[0]), CORE, with_ort=False)
    if command == "full":
        return call(Path(rest[0]), CORE[:-1] + FULL_EXTRA + CORE[-1:], with_ort=True)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
