"""The GPU kit without a GPU: parts join back byte for byte (and refuse when they do not), the
dependency walk carries exactly what the device lacks, pip's resolver checks the set offline,
the budget shares a call's seconds among its steps, and the core call run as a dry run
installs for real and reports every GPU step SKIPPED."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.gpu.budget import Step, StepState, fits, limit, skip_reason
from tests.gpu.dry_run import CARRY, COMMAND, TIMEOUT_S
from tests.gpu.kit import (
    carry_fallbacks,
    check_installable,
    read_device_packages,
    stand_in_version,
    walk,
)
from tests.gpu.on_device import CORE, DEFAULT_BUDGET, Item, execute, pytest_item
from tests.gpu.parts import JoinError, join_part, split

ROOT = Path(__file__).parents[2]


def test_parts_join_back_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "runtime.whl"
    data = bytes(range(256)) * 4001  # not a multiple of the part size
    source.write_bytes(data)
    manifest = split(source, tmp_path / "parts", part_bytes=100_000)
    assert len(manifest["parts"]) == 11
    assert all((tmp_path / "parts" / p).stat().st_size <= 100_000 for p in manifest["parts"])
    for n in range(1, 12):
        joined, complete = join_part(tmp_path / "parts", n, tmp_path / "joined")
        assert complete is (n == 11)
    assert joined.read_bytes() == data


def test_a_skipped_or_damaged_part_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "runtime.whl"
    source.write_bytes(b"x" * 250)
    split(source, tmp_path / "parts", part_bytes=100)
    join_part(tmp_path / "parts", 1, tmp_path / "joined")
    with pytest.raises(JoinError, match="holds 100 bytes, 200 expected"):
        join_part(tmp_path / "parts", 3, tmp_path / "joined")  # part 2 skipped
    (tmp_path / "parts" / "runtime.whl.part-02").write_bytes(b"y" * 100)
    join_part(tmp_path / "parts", 2, tmp_path / "joined")
    with pytest.raises(JoinError, match="SHA-256 does not match"):
        join_part(tmp_path / "parts", 3, tmp_path / "joined")


def wheel(folder: Path, name: str, version: str, *requires: str, extras: str = "") -> Path:
    dist = f"{name.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Provides-Extra: {e}" for e in extras.split(",") if e]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")
        archive.writestr(
            f"{dist}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    return path


class FakeIndex:
    """Fetches from a folder of made-up wheels, recording what was asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.asked: list[str] = []

    def __call__(self, name: str, spec: SpecifierSet) -> Path:
        self.asked.append(f"{name}{spec}")
        found = sorted(self.folder.glob(f"{name.replace('-', '_')}-*.whl"))
        ok = [w for w in found if spec.contains(w.name.split("-")[1])]
        return ok[-1]


def test_the_walk_carries_only_what_the_device_lacks(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    wheel(index, "pydantic", "2.9.0", "pydantic-core==2.23.4", "typing-extensions>=4.6")
    wheel(index, "pydantic-core", "2.23.4", "typing-extensions>=4.6")
    wheel(index, "fastapi", "0.115.0", "starlette<0.39", "pydantic>=2")
    wheel(index, "starlette", "0.38.0", "anyio<5", 'trio; extra == "full"')
    wheel(index, "torch-extra", "1.0", 'pywin32; sys_platform == "win32"')
    device = {"torch": "2.11.0", "typing-extensions": None, "anyio": None, "numpy": "2.5.2"}
    roots = [
        (Requirement(r), "kiln")
        for r in ("pydantic>=2.7", "fastapi", "torch>=2.6", "numpy<2", "torch-extra")
    ]
    fetch = FakeIndex(index)
    plan = walk(roots, device, fetch)
    assert sorted(plan.wheels) == [
        "fastapi",
        "pydantic",
        "pydantic-core",
        "starlette",
        "torch-extra",
    ]
    assert set(plan.on_device) == {"torch", "typing-extensions", "anyio", "numpy"}
    # A known device version outside what asks for it is a conflict, said plainly.
    assert plan.conflicts == ["kiln needs numpy<2, the device has numpy 2.5.2"]
    assert "trio" not in str(fetch.asked)
    assert "pywin32" not in str(fetch.asked)
    assert stand_in_version(plan.device_specifiers["anyio"]) == "0"  # inside <5


def test_a_fallback_is_carried_for_each_unread_device_version_something_constrains(
    tmp_path: Path,
) -> None:
    index = tmp_path / "index"
    index.mkdir()
    wheel(index, "pydantic", "2.9.0", "typing-extensions>=4.16", "anyio", "numpy>=2")
    wheel(index, "typing-extensions", "4.16.0")
    device = {"typing-extensions": None, "anyio": None, "numpy": "2.5.2"}
    fetch = FakeIndex(index)
    plan = walk([(Requirement("pydantic"), "kiln")], device, fetch)
    # Only the unread version that something bounds: anyio is unbounded, numpy was read.
    assert carry_fallbacks(plan, device, fetch) == {
        "typing-extensions": "typing_extensions-4.16.0-py3-none-any.whl"
    }


def test_stand_ins_fall_inside_what_asked_for_them() -> None:
    assert stand_in_version(SpecifierSet(">=2.1,<3.0.0")) == "2.1"
    assert stand_in_version(SpecifierSet(">=13")) == "999"
    assert stand_in_version(SpecifierSet()) == "999"
    assert stand_in_version(SpecifierSet("==1.2.*")) == "1.2"


def test_pip_resolver_checks_the_set_offline(tmp_path: Path) -> None:
    carried, runtime_dir = tmp_path / "wheels", tmp_path / "runtime"
    carried.mkdir()
    runtime_dir.mkdir()
    wheel(carried, "kiln", "0.2.0", 'boto3; extra == "builder"', "pyyaml", extras="builder,serve")
    runtime = wheel(runtime_dir, "onnxruntime-gpu", "1.31.1", "numpy>=1.21")
    device = {"pyyaml": None, "numpy": "2.5.2"}
    plan = walk(
        [(Requirement("pyyaml"), "kiln"), (Requirement("numpy>=1.21"), "kit")],
        device,
        FakeIndex(carried),
    )
    with pytest.raises(subprocess.CalledProcessError):  # boto3 is neither carried nor there
        check_installable(carried, runtime, device, plan)
    wheel(carried, "boto3", "1.35.0")
    check_installable(carried, runtime, device, plan)


def test_the_device_list_is_one_data_file() -> None:
    device = read_device_packages()
    assert device["torch"] == "2.11.0"
    assert "pydantic" not in device  # Kiln needs it; the device lacks it: the kit carries it


def fake_kit(root: Path) -> Path:
    """A kit whose root needs one package this interpreter has new enough (pyyaml) and one it
    has too old (typing-extensions>=99), each with a made-up fallback wheel carried."""
    wheels = root / ".gpu-kit" / "wheels"
    wheels.mkdir(parents=True)
    wheel(wheels, "kiln-kit-probe", "1.0", "pyyaml>=1", "typing-extensions>=99")
    wheel(wheels, "pyyaml", "99.0")
    wheel(wheels, "typing-extensions", "99.0")
    (wheels / "plan.json").write_text(json.dumps({"roots": ["kiln-kit-probe"]}))
    return wheels


def test_the_core_call_dry_run_installs_for_real_and_skips_every_gpu_step(
    tmp_path: Path,
) -> None:
    """The core call as pasted into the device tool, with KILN_GPU_DRY_RUN=1, in a copy of
    the tree: the install is real and decided by pip against what is installed (the root and
    the too-old package's fallback land in the site folder, the new-enough one is kept), the
    GPU steps are SKIPPED with the dry run's reason, and the summary comes back into $OUT."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "tests", tree / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "examples", tree / "examples", ignore=shutil.ignore_patterns("data"))
    shutil.copytree(ROOT / "benchmarks", tree / "benchmarks")
    shutil.copy(ROOT / "pyproject.toml", tree)
    fake_kit(tree)
    out, site = tmp_path / "out", tmp_path / "site"
    out.mkdir()
    env = {
        **os.environ,
        "OUT": str(out),
        "KILN_GPU_DRY_RUN": "1",
        "KILN_GPU_SITE": str(site),
        "KILN_GPU_RESULTS": str(tmp_path / "results"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    proc = subprocess.run(
        ["bash", "-c", COMMAND], cwd=tree, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in site.glob("*.dist-info")) == [
        "kiln_kit_probe-1.0.dist-info",
        "typing_extensions-99.0.dist-info",
    ]
    summary = json.loads((out / "summary.json").read_text())
    states = {i["name"]: (i["state"], i["reason"]) for i in summary["items"]}
    assert [i["name"] for i in summary["items"]] == [s.name for s in CORE]
    assert states["install"][0] == "OK"
    assert states["example"][0] == "OK"
    assert states["gpu-tests"][0] == "SKIPPED"
    assert states["optimize-lipsync"] == (
        "SKIPPED",
        "KILN_GPU_DRY_RUN=1: a dry run of the call, GPU steps are not run",
    )
    assert states["serve-lipsync"] == ("SKIPPED", "optimize-lipsync did not succeed")
    assert summary["dryRun"] is True
    assert summary["usedSeconds"] < summary["budgetSeconds"]
    assert "===== install.log" in (out / "logs.txt").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["logs.txt", "summary.json"]


def test_the_core_steps_fit_the_call() -> None:
    assert fits(CORE, DEFAULT_BUDGET["core"])
    assert DEFAULT_BUDGET["core"] + 60 <= TIMEOUT_S <= 8 * 60 + 60  # start-up and collect
    assert CARRY == [".gpu-kit/wheels"]


def test_a_step_out_of_time_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    """SIGINT first, SIGKILL after the grace period for a step that ignores it, and the
    process group goes whole: a server it started does not outlive it."""
    child = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(child)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    # Ignored here, SIGINT stays ignored in the step from its first instruction (an ignored
    # signal survives exec), so only the SIGKILL can end it.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        item = execute(tmp_path, "stuck", [sys.executable, "-c", script], seconds=8, grace=1)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert item.state is StepState.FAILED
    assert item.reason.startswith("timed out after")
    pid = int(child.read_text())
    while not gone(pid):  # killed, then reaped by init: wait for that state
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_pytest_counts_join_the_reason_and_all_skipped_is_skipped(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase name="a"><skipped message="no tensorrt"/></testcase>'
        "</testsuite></testsuites>"
    )
    timed_out = Item("gpu-tests", StepState.FAILED, "timed out after 110 s: ...")
    assert pytest_item(timed_out, junit).reason == (
        "1 passed, 1 failed, 1 skipped; timed out after 110 s: ..."
    )
    junit.write_text(
        '<testsuites><testsuite tests="2" failures="0" errors="0" skipped="2">'
        '<testcase name="a"><skipped message="no CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    skipped = pytest_item(Item("gpu-tests", StepState.OK), junit)
    assert (skipped.state, skipped.reason) == ("SKIPPED", "all 2 skipped: no CUDA device")


STEPS = [Step("a", 100), Step("b", 50, needs="a"), Step("c", 30)]


@pytest.mark.parametrize(
    ("index", "left", "expected"),
    [
        (0, 180.0, 100.0),  # the first owes the later ones their boxes
        (0, 60.0, 0.0),  # too little left: nothing for it
        (1, 170.0, 140.0),  # an early finish leaves its slack to the next
        (2, 12.0, 12.0),  # the last takes whatever is left
    ],
)
def test_a_step_may_use_what_is_left_less_what_later_steps_are_owed(
    index: int, left: float, expected: float
) -> None:
    assert limit(STEPS, index, left) == expected


def test_a_step_is_skipped_for_a_failed_prerequisite_no_gpu_or_no_time() -> None:
    ok = {"a": StepState.OK}
    assert skip_reason(STEPS[1], {"a": StepState.FAILED}, "", 50) == "a did not succeed"
    assert skip_reason(STEPS[1], ok, "no CUDA device", 50) == "no CUDA device"
    assert skip_reason(Step("x", 1, gpu=False), ok, "no CUDA device", 50) is None
    assert str(skip_reason(STEPS[1], ok, "", 2)).startswith("out of time: 2 s")
    assert skip_reason(STEPS[1], ok, "", 50) is None
