"""What a user sees from `kiln optimize`, run as a real process so file descriptors are real:
the table and verdict on the terminal, the libraries' chatter in the folder's kiln.log, one
line with -q, and an output folder replaced as a whole (Failed everywhere after a failure)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TinyExample, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILN = str(Path(sys.executable).parent / "kiln")


def kiln(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KILN, "optimize", *args], capture_output=True, text=True, timeout=600, check=False
    )


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def status(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "status.json").read_text())
    return data


# A model package that chatters the ways libraries do: a print, a Python warning, and bytes
# written straight to file descriptor 2 (what C++ libraries do). Which libraries chatter
# depends on what is installed, so the test brings its own.
CHATTY = """
import os
import sys
import warnings

from tiny_models import build as tiny


def build():
    print("chatty: building the model")
    warnings.warn("chatty: a library warning")
    os.write(2, b"chatty: straight to fd 2\\n")
    sys.stderr.flush()
    return tiny()
"""


def test_the_terminal_gets_the_table_and_verdict_and_the_log_gets_the_rest(
    tiny: TinyExample,
) -> None:
    (tiny.root / "chatty_models.py").write_text(CHATTY)
    source = {"uri": "weights.pt", "format": "factory", "factory": "chatty_models:build"}
    tiny.write_spec(tiny_spec(source=source))
    out = tiny.root / "out"
    proc = kiln(str(tiny.spec_path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[-1] == f"status: {out / 'status.json'}, log: {out / 'kiln.log'}"
    assert any(line.startswith("cpu: serve ") for line in lines), proc.stderr
    # Nothing from the libraries reached the terminal: torch's and ONNX Runtime's warnings,
    # the exporter's notes and the quantizer's prints are in the log.
    for noise in ("Warning", "warn(", "torchvision", "W1125", "Collecting", "chatty"):
        assert noise not in proc.stderr + proc.stdout, noise
    log = (out / "kiln.log").read_text()
    for chatter in ("building the model", "a library warning", "straight to fd 2"):
        assert f"chatty: {chatter}" in log, log[-2000:]
    report = (out / "report.md").read_text()
    assert report.index("## Verdict") < report.index("| target |")
    assert "<h2>Verdict</h2>" in (out / "report.html").read_text()


def test_quiet_prints_the_summary_line_only_and_verbose_keeps_no_log(tiny: TinyExample) -> None:
    out = tiny.root / "out"
    proc = kiln(str(tiny.spec_path), "-o", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == status(out)["summary"] + "\n"
    proc = kiln(str(tiny.spec_path), "-o", str(out), "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert "kiln.log" not in files(out)
    assert proc.stderr.splitlines()[-1] == f"status: {out / 'status.json'}"


def test_a_failed_run_leaves_a_folder_that_says_failed_everywhere(tiny: TinyExample) -> None:
    out = tiny.root / "out"
    assert kiln(str(tiny.spec_path), "-o", str(out), "-q").returncode == 0
    assert status(out)["phase"] == "Ready"
    assert {"model.json", "report.md", "report.html", "kiln.log"} <= files(out)

    # A spec that never starts: the earlier success must not look current.
    tiny.write_spec(tiny_spec(batchSizes=[0]))
    proc = kiln(str(tiny.spec_path), "-o", str(out), "-q")
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tiny.spec_path}: spec.batchSizes[0]: ")
    failed_everywhere(out, "spec.batchSizes[0]")

    # A failure during the run: the same, with the run's log kept.
    assert kiln(str(tiny.spec_path.parent / "missing.yaml"), "-o", str(out)).returncode == 2
    tiny.write_spec(
        tiny_spec(source={"uri": "gone.pt", "format": "factory", "factory": "tiny_models:build"})
    )
    proc = kiln(str(tiny.spec_path), "-o", str(out))
    assert proc.returncode == 2
    *_, error, log = proc.stderr.splitlines()  # after the progress lines
    assert error.startswith("error: spec.source.uri (")
    assert log == f"log: {out / 'kiln.log'}"
    failed_everywhere(out, "gone.pt")
    assert "kiln.log" in files(out)
    # Out/NAME without --output is replaced the same way; no staging folder is left behind.
    assert [p.name for p in tiny.root.iterdir() if ".kiln-" in p.name] == []


def failed_everywhere(out: Path, cause: str) -> None:
    assert status(out)["phase"] == "Failed"
    assert cause in status(out)["message"]
    assert "model.json" not in files(out)  # nothing `kiln serve --from` could take
    assert "**Phase:** Failed" in (out / "report.md").read_text()
    assert "Failed" in (out / "report.html").read_text()


def test_a_folder_kiln_did_not_write_is_never_replaced(tiny: TinyExample) -> None:
    mine = tiny.root / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = kiln(str(tiny.spec_path), "-o", str(mine), "-q")
    assert proc.returncode == 2
    assert proc.stderr == (
        f"error: --output {mine}: exists and holds files Kiln did not write (notes.txt); "
        "choose another folder\n"
    )
    assert files(mine) == {"notes.txt"}
