"""A run killed where no `finally` runs (SIGKILL, as the kernel's OOM killer sends) leaves its
work and staging folders; the next run into the same output folder removes them and works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.cli.leftovers import owner_of, sweep
from tests.conftest import make_tiny_example, tiny_spec
from tests.integration.test_serve import KILN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def leftovers(tmp: Path, parent: Path) -> list[str]:
    work = [p.name for p in tmp.iterdir() if p.name.startswith("kiln-")]
    return work + [p.name for p in parent.iterdir() if p.name.startswith(".out.kiln-")]


def test_the_run_after_a_killed_one_removes_its_folders_and_works(tmp_path: Path) -> None:
    example = make_tiny_example(tmp_path, calibration=False)
    spec = example.write_spec(
        tiny_spec(precisions=["fp32"], calibration=None, selection={"minSpeedup": 0.01})
    )
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    command = [KILN, "optimize", str(spec), "-o", str(tmp_path / "out"), "-q"]
    killed = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Killed once both folders exist: the state the kernel's kill leaves, whatever the timing.
    deadline = time.monotonic() + 300
    while len(leftovers(tmp, tmp_path)) < 2 and killed.poll() is None:
        assert time.monotonic() < deadline, "the run never made its folders"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    left = leftovers(tmp, tmp_path)
    assert len(left) == 2, left  # what a killed run leaves

    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert leftovers(tmp, tmp_path) == []
    assert (tmp_path / "out" / "status.json").is_file()


def test_only_folders_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    mine, theirs = tmp_path / f"kiln-{os.getpid()}-a", tmp_path / f"kiln-{gone.pid}-b"
    foreign = [tmp_path / "kiln-notapid-c", tmp_path / "kilnx-1-d", tmp_path / "kiln-abc"]
    for folder in (mine, theirs, *foreign):
        folder.mkdir()
    assert owner_of(theirs.name, "kiln-") == gone.pid
    assert sweep(tmp_path, "kiln-") == [theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, *foreign))
