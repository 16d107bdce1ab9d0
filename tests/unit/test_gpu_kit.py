"""The GPU kit without a GPU: parts join back byte for byte (and refuse when they do not), the
dependency walk carries exactly what the device lacks, pip's resolver checks the set offline,
and the on-device run reports every item SKIPPED where there is no CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.gpu.kit import (
    check_installable,
    read_device_packages,
    stand_in_version,
    walk,
)
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


def test_run_without_cuda_reports_every_item_skipped(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/gpu/on_device.py"), "run", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    items = json.loads((tmp_path / "summary.json").read_text())["items"]
    assert len(items) == 7
    for item in items:
        assert item["state"] == "SKIPPED", item
        assert item["reason"].startswith("no CUDA device"), item
