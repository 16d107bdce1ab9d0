"""Kiln as a user installs it: a real, non-editable wheel built from this tree, installed in a
clean virtual environment. The wheel holds every module of every package and the protocol's
.proto, its build prints no warning, and the installed `kiln` finds its .proto and compiles it
from where the wheel put it, not from the working tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).parents[2]


def tracked() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [path for path in listed.stdout.decode().split("\0") if (ROOT / path).is_file()]


def tracked_package_files() -> set[str]:
    """What the wheel must hold: each mapped package folder's tracked files, by their place
    in the `kiln` namespace (tests and caches are not in these folders)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    wanted: set[str] = set()
    for package, folder in config["package-dir"].items():
        prefix = folder.rstrip("/") + "/"
        for path in tracked():
            if path.startswith(prefix) and path.endswith((".py", ".proto")):
                wanted.add(package.replace(".", "/") + "/" + path[len(prefix) :])
    return wanted


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    # Built from a copy of the tracked files, as from a fresh clone: setuptools leaves build/
    # behind, and a stale build/ would lend the wheel files the tree no longer has.
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("wheel")
    for path in tracked():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / path, tree / path)
    # No build isolation: the venv's own setuptools, so the test needs no index.
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*argv, "-w", str(out), str(tree)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("kiln-*.whl")
    return built, done.stdout + done.stderr


def test_the_wheel_builds_without_a_warning(wheel: tuple[Path, str]) -> None:
    _, output = wheel
    warned = [line for line in output.splitlines() if "warning" in line.lower()]
    assert not warned, "\n".join(warned)


def test_the_wheel_holds_every_module_and_the_proto(wheel: tuple[Path, str]) -> None:
    built, _ = wheel
    names = set(zipfile.ZipFile(built).namelist())
    assert "kiln/serve/proto/grpc_predict_v2.proto" in names
    missing = sorted(tracked_package_files() - names)
    assert not missing, missing


def test_the_installed_kiln_compiles_its_proto_from_the_wheel(
    wheel: tuple[Path, str], tmp_path: Path
) -> None:
    built, _ = wheel
    clean = tmp_path / "clean"
    venv.create(clean, with_pip=False)
    python = clean / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", "--no-index", str(built)], check=True)
    # Kiln from the clean venv; its dependencies from this one's site-packages, read as a plain
    # path entry (so this venv's editable install of the working tree is not loaded).
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}

    def installed(*argv: str) -> str:
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp_path, env=env, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    script = (
        "import sys; from pathlib import Path\n"
        "from kiln.serve import grpc_protocol\n"
        "messages, stubs = grpc_protocol.compiled(Path(sys.argv[1]))\n"
        "print(grpc_protocol.PROTO)\n"
        "print(messages.ModelInferRequest.DESCRIPTOR.full_name)\n"
    )
    proto, message = installed(str(python), "-c", script, str(tmp_path / "grpc")).split()
    assert Path(proto).is_relative_to(clean), proto  # the wheel's copy, not the working tree's
    assert message == "inference.ModelInferRequest"
    assert "--result" in installed(str(clean / "bin" / "kiln"), "serve", "--help")
