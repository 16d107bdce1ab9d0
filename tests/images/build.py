"""Build Kiln's images (the Dockerfile's targets) with whatever container tool is here.

The base is the public slim Python image where a registry answers; else a base made by
debootstrap from Debian's packages (`base.py`). Every build's log goes to .kiln/images/, and
each image's build time and size are printed, so the figures in README come from a command.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kiln.api.version import VERSION
from tests.images import base
from tests.images.engine import Engine, Tool

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / ".kiln" / "images"
TARGETS = ("operator", "builder", "builder-gpu")
DEFAULT_BASE = "docker.io/library/python:3.11.10-slim-bookworm"  # the Dockerfile's default
OPERATOR_BUDGET_BYTES = 300 * 10**6


class BaseChoice(StrEnum):
    AUTO = "auto"  # the registry's image where it can be pulled, else debootstrap's
    REGISTRY = "registry"
    DEBOOTSTRAP = "debootstrap"


@dataclass(frozen=True)
class Built:
    target: str
    image: str
    seconds: float
    size_bytes: int

    def line(self) -> str:
        return (
            f"IMAGE {self.image}  target {self.target}  built in {self.seconds:.0f} s  "
            f"{self.size_bytes / 10**6:.0f} MB"
        )


def image_name(target: str, registry: str = "") -> str:
    """kiln-operator / kiln-builder / kiln-builder-gpu, at Kiln's version; the names the
    manifests and the operator's defaults use (`registry/` in front when pushing)."""
    name = f"kiln-{target}:{VERSION}"
    return f"{registry.rstrip('/')}/{name}" if registry else name


def host_ca_bundle() -> Path:
    """The CA bundle this machine trusts, passed to the build as a secret so pip works behind
    a TLS-intercepting proxy; an empty file where there is none."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    empty = LOGS / "no-ca.pem"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    return empty


def pick_base(engine: Engine, choice: BaseChoice, log: Path) -> str:
    if choice is BaseChoice.DEBOOTSTRAP:
        return base.ensure_base(engine, log)
    if engine.exists(DEFAULT_BASE) or _pull(engine, DEFAULT_BASE):
        return DEFAULT_BASE
    if choice is BaseChoice.REGISTRY:
        raise RuntimeError(f"base image {DEFAULT_BASE} cannot be pulled (see {log})")
    print(f"base: {DEFAULT_BASE} cannot be pulled here; using a debootstrap base", flush=True)
    return base.ensure_base(engine, log)


def _pull(engine: Engine, image: str) -> bool:
    try:
        argv = [engine.tool.value, "pull", *([] if engine.tool is Tool.DOCKER else ["-q"]), image]
        done = subprocess.run(argv, capture_output=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def build(engine: Engine, target: str, base_image: str, tensorrt: str, registry: str = "") -> Built:
    """One target, tagged with its name; the log at .kiln/images/<target>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{target}.log"
    image = image_name(target, registry)
    args = {"PYTHON_IMAGE": base_image, "TENSORRT": tensorrt}
    argv = engine.build_argv(REPO, target, image, args, host_ca_bundle())
    started = time.monotonic()
    with log.open("wb") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(
            f"{target}: build failed (exit {done.returncode}); {log}:\n" + "\n".join(tail)
        )
    return Built(target, image, time.monotonic() - started, engine.size_bytes(image))


def tensorrt_record(engine: Engine, image: str) -> str:
    """What the GPU image says about TensorRT (installed, or why not): its own record."""
    from tests.images.run import Container, run

    out = LOGS / "tensorrt-record.txt"
    with out.open("wb") as sink:
        code = run(engine, Container(image, command=["cat", "/opt/kiln/TENSORRT"]), stdout=sink)
    text = out.read_text().strip()
    return text if code == 0 else f"TensorRT: no record in the image (exit {code}: {text})"
