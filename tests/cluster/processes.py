"""Child processes of the harness: each in its own process group with its own log, recorded in
a state file, so `down` (or an interrupted test run) can stop every one of them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.cluster.binaries import ComponentError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    component: str
    pid: int
    log: str
    command: list[str]


class Supervisor:
    def __init__(self, state_file: Path, resume: bool = False) -> None:
        """`resume`: add to the processes already recorded (the operator `make dev-up` starts
        next to a running cluster), so one `down` stops them all."""
        self.state_file = state_file
        self.procs: list[Proc] = []
        if resume and state_file.exists():
            self.procs = [Proc(**p) for p in json.loads(state_file.read_text())]
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def start(
        self,
        component: str,
        command: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        inherit_env: bool = True,
    ) -> Proc:
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log.open("ab") as out:
                popen = subprocess.Popen(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    env={**(os.environ if inherit_env else {}), **(env or {})},
                )
        except OSError as exc:
            raise ComponentError(component, f"cannot start: {exc}", log, command) from None
        proc = Proc(component, popen.pid, str(log), command)
        self.procs.append(proc)
        self._popen[popen.pid] = popen
        self.save()
        return proc

    def wait_ready(self, proc: Proc, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        popen = self._popen.get(proc.pid)
        while time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                raise ComponentError(
                    proc.component,
                    f"exited with code {popen.returncode}",
                    Path(proc.log),
                    proc.command,
                )
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise ComponentError(
            proc.component,
            f"did not become ready within {timeout:.0f}s",
            Path(proc.log),
            proc.command,
        )

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps([asdict(p) for p in self.procs], indent=2))

    def stop_all(self) -> None:
        stop_recorded(self.state_file, [asdict(p) for p in self.procs])
        self.procs = []


def stop_recorded(state_file: Path, procs: list[dict[str, object]] | None = None) -> list[str]:
    """Stop every process recorded in `state_file`, newest first; returns their components."""
    if procs is None:
        if not state_file.exists():
            return []
        procs = json.loads(state_file.read_text())
    stopped = [str(p["component"]) for p in reversed(procs) if _stop(int(str(p["pid"])))]
    state_file.unlink(missing_ok=True)
    return stopped


def _stop(pid: int) -> bool:
    """SIGTERM the process group, SIGKILL it after 10 s; False if it was already gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def restart_recorded(
    state_file: Path,
    component: str,
    ready: Callable[[], bool],
    timeout: float,
    pause: float = 0.0,
) -> Proc:
    """Stop one recorded component (SIGTERM to its group, as a node's shutdown sends), wait
    `pause` seconds, start the same command again (its log appended to) and wait until
    `ready`; the state file then records the new process, so `down` still stops everything."""
    sup = Supervisor(state_file, resume=True)
    old = next(p for p in sup.procs if p.component == component)
    _stop(old.pid)
    sup.procs.remove(old)
    time.sleep(pause)
    new = sup.start(component, old.command, Path(old.log))
    sup.wait_ready(new, ready, timeout)
    return new


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A process whose parent is gone (`make cluster-down` runs in a new process) stays a zombie
    # until init reaps it, and not every init does: a zombie has stopped all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bool(response.status == 200)
