"""Run a command in a built image, as a kubelet would run a container: the image's user and
working directory, its entrypoint unless a command is given, the given env and bind mounts,
and the host's network (the local cluster's S3 and API server listen on loopback).

docker runs a container; buildah runs in a working container made from the image with
`--isolation chroot` (no user namespaces or OCI runtime needed), removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.images.engine import Engine, Tool, output


@dataclass(frozen=True)
class ImageConfig:
    user: str
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    env: dict[str, str]

    def argv(self, command: list[str], args: list[str]) -> list[str]:
        """Kubernetes' rule: `command` replaces the entrypoint, `args` replace the CMD."""
        if command:
            return [*command, *args]
        return [*self.entrypoint, *(args or self.cmd)]


@dataclass(frozen=True)
class Container:
    image: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, Path] = field(default_factory=dict)  # path in the container -> host path
    workdir: str = ""


def image_config(engine: Engine, image: str) -> ImageConfig:
    if engine.tool is Tool.DOCKER:
        argv = ["docker", "image", "inspect", "--format", "{{json .Config}}", image]
        config = json.loads(output(argv))
    else:
        # buildah's templates have no `json` function: the whole record, then its config.
        config = json.loads(output(["buildah", "inspect", "--type", "image", image]))
        config = config["OCIv1"].get("config") or {}
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        user=config.get("User") or "0",
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        workdir=config.get("WorkingDir") or "/",
        env=env,
    )


def run(
    engine: Engine, spec: Container, stdout: IO[bytes] | int | None = None, timeout: float = 1800
) -> int:
    """Run `spec` to its end; its exit code (128 + N when killed by signal N). Past `timeout`
    it raises TimeoutExpired, and leaving `started` stops it."""
    with started(engine, spec, stdout) as process:
        return exit_code(process.wait(timeout=timeout))


@contextlib.contextmanager
def started(
    engine: Engine, spec: Container, stdout: IO[bytes] | int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`spec` running in the background (a server, say); stopped and cleaned up on exit."""
    config = image_config(engine, spec.image)
    argv = config.argv(spec.command, spec.args)
    working = ""
    if engine.tool is Tool.DOCKER:
        cmd = _docker_argv(spec, argv)
    else:
        working = output(["buildah", "from", "--pull=never", "--quiet", spec.image])
        cmd = _buildah_argv(config, spec, argv, working)
    stderr = subprocess.STDOUT if stdout is not None else None
    # Its own session, so that stopping it reaches the command inside as well as the tool.
    process = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        yield process
    finally:
        _stop(process)
        if working:
            subprocess.run(["buildah", "rm", working], capture_output=True, check=False)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _buildah_argv(config: ImageConfig, spec: Container, argv: list[str], working: str) -> list[str]:
    cmd = ["buildah", "run", "--isolation", "chroot", "--network", "host"]
    cmd += ["--user", config.user, "--workingdir", spec.workdir or config.workdir]
    for key, value in spec.env.items():
        cmd += ["--env", f"{key}={value}"]
    for inside, host in spec.mounts.items():
        cmd += ["--volume", f"{host}:{inside}"]
    return [*cmd, working, "--", *argv]


def _docker_argv(spec: Container, argv: list[str]) -> list[str]:
    cmd = ["docker", "run", "--rm", "--network", "host", "--entrypoint", argv[0]]
    if spec.workdir:
        cmd += ["--workdir", spec.workdir]
    for key, value in spec.env.items():
        cmd += ["--env", f"{key}={value}"]
    for inside, host in spec.mounts.items():
        cmd += ["--volume", f"{host}:{inside}"]
    return [*cmd, spec.image, *argv[1:]]


def exit_code(code: int) -> int:
    """A process killed by signal N (Popen's -N) exits 128 + N, as a container runtime reports
    it. (buildah reports a command inside killed by a signal as 128 + N already.)"""
    return 128 - code if code < 0 else code
