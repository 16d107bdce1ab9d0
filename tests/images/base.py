"""A Debian base image made by debootstrap from Debian's own packages, for a machine that
reaches Debian's archive but no image registry.

It carries what the Dockerfile needs of a base (`python3` with `venv`, CA certificates) and
nothing else: docs, man pages, locales and apt's package lists are dropped, which makes it the
size of the slim Python image (about 130 MB). The rootfs tarball is cached outside the clone,
keyed by what goes into it, and the image is labelled with that key, so a second `make images`
reuses both. The archive is the one this machine's apt uses (a mirror, say), else
debootstrap's default.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.images.engine import Engine, Tool, output, program

SUITE = "bookworm"  # the Dockerfile's default base is Debian bookworm too
PACKAGES = ("python3", "python3-venv", "ca-certificates")
IMAGE = f"localhost/kiln-base:{SUITE}"
DROPPED = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt",
    "var/lib/apt/lists",
)
ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LABEL = "dev.kiln.base-key"


def apt_mirror(sources: list[Path] | None = None) -> str | None:
    """The Debian archive this machine's apt uses (deb822 `URIs:` or one-line `deb` form)."""
    if sources is None:
        folder = Path("/etc/apt/sources.list.d")
        sources = [Path("/etc/apt/sources.list"), *sorted(folder.glob("*"))]
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for match in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.M):
            uri = match.group(1)
            if "security" not in uri and uri.rstrip("/").endswith("/debian"):
                return uri
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kiln" / "images"


def base_key(mirror: str | None) -> str:
    recipe = "\n".join([SUITE, *PACKAGES, *DROPPED, mirror or "default"])
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def rootfs_tarball(mirror: str | None, log: Path) -> Path:
    """The trimmed rootfs as a tarball, from the cache or made now (about 40 s)."""
    cached = cache_dir() / f"rootfs-{base_key(mirror)}.tar"
    if cached.exists():
        return cached
    if os.geteuid() != 0:
        raise RuntimeError(
            "the debootstrap base needs root (debootstrap makes device nodes and chroots): "
            "run as root, or build from a registry's image (IMAGE_BASE=registry)"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-rootfs-") as tmp:
        root = Path(tmp) / "root"
        argv = [program("debootstrap"), "--variant=minbase", f"--include={','.join(PACKAGES)}"]
        argv += [SUITE, str(root), *([mirror] if mirror else [])]
        log.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no .kiln/ yet
        with log.open("ab") as out:
            subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=True)
        for dropped in DROPPED:
            shutil.rmtree(root / dropped, ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)  # apt-get update expects it
        partial = cached.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True)
        partial.rename(cached)  # only a whole tarball is ever found in the cache
    return cached


def ensure_base(engine: Engine, log: Path) -> str:
    """The debootstrap base image's name, built unless one with the same key exists."""
    mirror = apt_mirror()
    key = base_key(mirror)
    if engine.exists(IMAGE) and _label(engine, IMAGE) == key:
        return IMAGE
    tarball = rootfs_tarball(mirror, log)
    if engine.tool is not Tool.BUILDAH:
        argv = [engine.tool.value, "import", "--change", f"ENV PATH={ENV_PATH}", "--change"]
        argv += [f"LABEL {LABEL}={key}", str(tarball), IMAGE]
        subprocess.run(argv, check=True, capture_output=True)
        return IMAGE
    container = output(["buildah", "from", "scratch"])
    try:
        _quiet(["buildah", "add", "--quiet", container, str(tarball), "/"])
        config = ["buildah", "config", "--env", f"PATH={ENV_PATH}", "--env", "LANG=C.UTF-8"]
        config += ["--label", f"{LABEL}={key}", "--cmd", "/bin/bash", container]
        _quiet(config)
        _quiet(["buildah", "commit", "--quiet", container, IMAGE])
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
    return IMAGE


def _quiet(argv: list[str]) -> None:
    """Run a step whose output is only an ID; its errors still reach the terminal."""
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def _label(engine: Engine, image: str) -> str:
    if engine.tool is Tool.BUILDAH:
        fmt = "{{index .OCIv1.Config.Labels " + f'"{LABEL}"' + "}}"
        return output(["buildah", "inspect", "--type", "image", "--format", fmt, image])
    fmt = "{{index .Config.Labels " + f'"{LABEL}"' + "}}"
    return output([engine.tool.value, "image", "inspect", "--format", fmt, image])
