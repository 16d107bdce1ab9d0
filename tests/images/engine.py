"""Which container tool builds and runs Kiln's images here, and the commands each one takes.

docker where its engine answers; else buildah (daemonless, `--isolation chroot`, so it works
as root in a sandbox without user namespaces); else podman, which builds like buildah. Runs
go through `buildah from` + `buildah run` where buildah is present, because `podman run`
needs a working OCI runtime (crun), which sandboxes like this one lack.

Installing buildah (and debootstrap, for the base) from Debian's packages is `ensure_tools`:
as root on a Debian machine only; elsewhere it says what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEBIAN_PACKAGES = ("buildah", "debootstrap")


class Tool(StrEnum):
    DOCKER = "docker"
    BUILDAH = "buildah"
    PODMAN = "podman"


class NoEngineError(RuntimeError):
    """No tool that can build images is present or installable: the message says what to do."""


def _answers(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def output(argv: list[str]) -> str:
    """A container tool's answer (an ID, a JSON record), stripped; failing loudly."""
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def ensure_tools() -> str | None:
    """Install buildah and debootstrap from Debian's packages where missing and possible.
    Returns None when they are present afterwards, else the reason they are not."""
    missing = [p for p in DEBIAN_PACKAGES if shutil.which(p) is None and not _sbin(p)]
    if not missing:
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        names = " ".join(missing)
        return f"{names} missing: install them (Debian and Ubuntu: apt-get install {names})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        done = subprocess.run(install, capture_output=True, env=env, check=False)
        if done.returncode != 0:
            return f"apt-get could not install {' '.join(missing)}: {done.stderr.decode()[-300:]}"
    return None


def _sbin(program: str) -> str | None:
    """debootstrap lives in /usr/sbin, which a non-login PATH may lack."""
    for folder in ("/usr/sbin", "/sbin"):
        if (Path(folder) / program).exists():
            return str(Path(folder) / program)
    return None


def program(name: str) -> str:
    return shutil.which(name) or _sbin(name) or name


@dataclass(frozen=True)
class Engine:
    tool: Tool

    @staticmethod
    def detect() -> Engine:
        if shutil.which("docker") and _answers(["docker", "info"]):
            return Engine(Tool.DOCKER)
        for tool in (Tool.BUILDAH, Tool.PODMAN):
            if shutil.which(tool):
                if _answers([tool, "info"]):
                    return Engine(tool)
                raise NoEngineError(f"{tool} is installed but `{tool} info` fails here")
        raise NoEngineError(
            "no container tool here: docker's engine does not answer and neither buildah nor "
            "podman is installed (`make images` installs buildah as root on Debian)"
        )

    @property
    def can_run(self) -> bool:
        """Whether `run` works here: docker, or buildah (podman alone runs through crun)."""
        return self.tool is Tool.DOCKER or shutil.which("buildah") is not None

    def build_argv(
        self, context: Path, target: str, tag: str, args: dict[str, str], ca: Path
    ) -> list[str]:
        argv = [self.tool.value, "build" if self.tool is not Tool.BUILDAH else "bud"]
        if self.tool is not Tool.DOCKER:
            # chroot isolation: RUN steps work as root without user namespaces or a runtime.
            argv += ["--isolation", "chroot", "--layers"]
        argv += ["--target", target, "-t", tag, "--secret", f"id=ca,src={ca}"]
        for key, value in sorted(args.items()):
            argv += ["--build-arg", f"{key}={value}"]
        return [*argv, str(context)]

    def exists(self, image: str) -> bool:
        if self.tool is Tool.DOCKER:
            return _answers(["docker", "image", "inspect", image])
        return _answers([self.tool.value, "inspect", "--type", "image", image])

    def size_bytes(self, image: str) -> int:
        """The image's size on disk, uncompressed, as the tool itself reports it."""
        if self.tool is Tool.DOCKER:
            argv = ["docker", "image", "inspect", "--format", "{{.Size}}", image]
            return int(output(argv))
        listed = json.loads(output([self.tool.value, "images", "--json", image]))
        size = listed[0].get("size", listed[0].get("Size"))  # buildah: "266 MB"; podman: bytes
        return size if isinstance(size, int) else parse_size(str(size))


UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    """buildah's and podman's human sizes ("266 MB", "5.1 GB": decimal units) to bytes."""
    number, _, unit = text.strip().partition(" ")
    if unit not in UNITS:
        raise ValueError(f"unknown size {text!r}")
    return round(float(number) * UNITS[unit])


def find_engine(install: bool = True) -> Engine:
    """The container tool to use, installing buildah (and debootstrap) from Debian's packages
    first where none is present and `install` allows; NoEngineError says why there is none."""
    try:
        return Engine.detect()
    except NoEngineError:
        if not install:
            raise
        reason = ensure_tools()
        if reason is not None:
            raise NoEngineError(reason) from None
        return Engine.detect()
