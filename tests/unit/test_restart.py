"""The development cluster's kubelet stand-in (tests/cluster/restart.py): its back-off as a
table, and the real thing around a real process that exits, then is stopped as `make dev-down`
stops it (SIGTERM to the process group)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import restart
from tests.cluster.restart import BackOff

KUBELET = BackOff(initial=10, cap=300, reset_after=600)


@pytest.mark.parametrize(
    ("restarts", "ran", "expected"),
    [
        (0, 5, (1, 0.0)),  # the first exit: started again at once
        (1, 5, (2, 10.0)),  # then 10 s
        (2, 5, (3, 20.0)),  # doubling
        (5, 5, (6, 160.0)),
        (6, 5, (7, 300.0)),  # capped at 5 min
        (20, 5, (21, 300.0)),
        (6, 599.9, (7, 300.0)),  # not quite long enough to count as having lasted
        (6, 600, (1, 0.0)),  # a run of 10 min starts the count anew
    ],
)
def test_the_back_off_is_the_kubelets_shape(
    restarts: int, ran: float, expected: tuple[int, float]
) -> None:
    assert KUBELET.after(restarts, ran) == expected


def test_the_defaults_are_the_kubelets() -> None:
    assert BackOff() == KUBELET


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_exiting_command_is_started_again_until_its_group_is_stopped(tmp_path: Path) -> None:
    """A command that exits 3 twice (a lost Lease) and then keeps running: started three times,
    each exit logged; SIGTERM to the group ends both, and nothing is started after it."""
    starts = tmp_path / "starts"
    script = (
        "import pathlib, sys, time\n"
        f"p = pathlib.Path({str(starts)!r})\n"
        "n = len(p.read_text()) if p.exists() else 0\n"
        "p.write_text('x' * (n + 1))\n"
        "sys.exit(3) if n < 2 else time.sleep(600)\n"
    )
    log = tmp_path / "log"
    argv = [sys.executable, restart.__file__, "--initial", "0.05", "--", sys.executable, "-c"]
    with log.open("wb") as out:
        keeper = subprocess.Popen(
            [*argv, script], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(lambda: starts.exists() and len(starts.read_text()) == 3, "the third start")
        os.killpg(keeper.pid, signal.SIGTERM)
        assert keeper.wait(timeout=60) == 128 + signal.SIGTERM  # the command's own end
    finally:
        if keeper.poll() is None:
            os.killpg(keeper.pid, signal.SIGKILL)
    lines = [line for line in log.read_text().splitlines() if line.startswith("--- restart")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("--- restart: exited with 3 after")
    assert "starting again in 0s (restart 1 in a row)" in lines[0]
    assert "(restart 2 in a row)" in lines[1]
    assert len(starts.read_text()) == 3  # stopped, not started again
    with pytest.raises(ProcessLookupError):
        os.killpg(keeper.pid, 0)  # nothing of the group is left


def test_no_command_is_an_error() -> None:
    done = subprocess.run([sys.executable, restart.__file__, "--"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "no command to run" in done.stderr
