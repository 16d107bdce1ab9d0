"""The Dockerfile, without a Docker engine: hadolint, and what each target installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"
EXPECTED = {
    "operator": {"operator"},
    "builder": {"builder", "cpu", "serve"},
    "builder-gpu": {"builder", "gpu", "serve"},
}


def stages() -> dict[str, list[str]]:
    """Stage name -> its instruction lines (continuations joined)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match.group(1)
            found[current] = []
        elif current and line and not line.startswith("#"):
            found[current].append(line)
    return found


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or "hadolint"
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_target_installs_exactly_its_extras() -> None:
    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    all_stages = stages()
    for target, extras in EXPECTED.items():
        assert extras <= declared
        venv_stage = all_stages[f"{target}-venv"]
        installs = [re.search(r"kiln-\*\.whl\)\[([^\]]+)\]", line) for line in venv_stage]
        (found,) = [set(m.group(1).split(",")) for m in installs if m]
        assert found == extras, target


def test_final_stages_run_as_non_root_without_build_tooling() -> None:
    all_stages = stages()
    for target in EXPECTED:
        lines = all_stages[target]
        users = [line.split()[1] for line in lines if line.startswith("USER ")]
        assert users, target
        assert users[-1] not in ("0", "root"), target
        assert not any("pip install" in line for line in lines), target
        assert not any(line.startswith(("COPY operator/", "COPY builder/")) for line in lines), (
            target
        )  # sources only reach the wheel stage


def test_the_cpu_builder_has_the_compiler_aotinductor_builds_with() -> None:
    lines = stages()["builder"]
    assert any(re.search(r"apt-get install .*\bg\+\+=", line) for line in lines)
    # and the operator image, which never compiles or loads a model, has none
    assert not any("g++" in line for line in stages()["operator"])
