"""`make gpu-kit`: everything the lent GPU machine lacks to run Kiln, for CPython 3.12 on
manylinux x86_64, in a git-ignored folder the device calls carry:

    .gpu-kit/wheels/     Kiln as a wheel, its dependencies the device lacks (one pinned
                         version each), a fallback for each device package whose version was
                         never read, and plan.json: the roots to install, what was carried,
                         what the device is trusted to have, and why
    .gpu-kit/ort/        with --with-ort only (a longer lease): onnxruntime-gpu in parts of at
                         most 60 MiB, with parts.json (SHA-256); the wheel alone is over 190 MiB

What the device has is one data file, tests/gpu/device-packages.txt. The dependency closure is
walked here from each wheel's own metadata (markers evaluated for the device's Python), so
packages the device has (torch and its CUDA libraries above all) are never downloaded. At the
end pip's own resolver checks, with --no-index, that the carried wheels plus the device's
packages install together."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.gpu.parts import split

ROOT = Path(__file__).resolve().parents[2]
DEVICE_PACKAGES = Path(__file__).with_name("device-packages.txt")
EXTRAS = ("builder", "cpu", "serve")  # `cpu` is the device's onnxruntime; `gpu` is ORT below
RUNTIME = "onnxruntime-gpu"  # carried in parts; tensorrt cannot be fetched from here
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
TARGET = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--abi",
    "cp312",
    *[a for p in PLATFORMS for a in ("--platform", p)],
]


def device_environment() -> dict[str, str]:
    """Marker environment of the device's interpreter (CPython 3.12, Linux x86_64)."""
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    env.update(
        python_version="3.12",
        python_full_version="3.12.3",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def read_device_packages(path: Path = DEVICE_PACKAGES) -> dict[str, str | None]:
    """name -> version (None: present, version not read)."""
    found: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version.strip() or None
    return found


def requirements_of(wheel: Path, extras: frozenset[str]) -> list[Requirement]:
    """Requires-Dist of a wheel that apply on the device with these extras."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    out = []
    for text in metadata.get_all("Requires-Dist") or []:
        req = Requirement(text)
        envs = [{**device_environment(), "extra": e} for e in (sorted(extras) or [""])]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            out.append(req)
    return out


@dataclass
class Plan:
    """The walk's state: what is wanted from where, and what was trusted to the device."""

    specifiers: dict[str, SpecifierSet] = field(default_factory=dict)
    extras: dict[str, frozenset[str]] = field(default_factory=dict)
    wheels: dict[str, Path] = field(default_factory=dict)
    on_device: dict[str, list[str]] = field(default_factory=dict)  # name -> who asked what
    device_specifiers: dict[str, SpecifierSet] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)


def trusted(plan: Plan, req: Requirement, device: dict[str, str | None], asker: str) -> bool:
    """True when the device provides `req`; a known device version outside it is a conflict."""
    name = canonicalize_name(req.name)
    if name not in device:
        return False
    plan.on_device.setdefault(name, []).append(f"{asker}: {req}")
    plan.device_specifiers[name] = plan.device_specifiers.get(name, SpecifierSet()) & req.specifier
    version = device[name]
    if (
        version is not None
        and req.specifier
        and not req.specifier.contains(version, prereleases=True)
    ):
        plan.conflicts.append(f"{asker} needs {req}, the device has {name} {version}")
    return True


def walk(
    roots: list[tuple[Requirement, str]],
    device: dict[str, str | None],
    fetch: Callable[[str, SpecifierSet], Path],
) -> Plan:
    """Breadth-first over requirements: a package the device has is trusted, any other is
    fetched (its newest version within every specifier seen so far) and its own requirements
    are walked in turn. A specifier that tightens later re-fetches that package."""
    plan = Plan()
    queue = list(roots)
    while queue:
        req, asker = queue.pop(0)
        if trusted(plan, req, device, asker):
            continue
        name = canonicalize_name(req.name)
        spec = plan.specifiers.get(name, SpecifierSet()) & req.specifier
        extras = plan.extras.get(name, frozenset()) | frozenset(req.extras)
        if name in plan.wheels and spec == plan.specifiers[name] and extras == plan.extras[name]:
            continue
        plan.specifiers[name], plan.extras[name] = spec, extras
        plan.wheels[name] = fetch(name, spec)
        queue += [(r, name) for r in requirements_of(plan.wheels[name], extras)]
    return plan


class Fetch:
    """pip download --no-deps for the device's interpreter and platforms, into one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, name: str, spec: SpecifierSet) -> Path:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    *TARGET,
                    "-d",
                    tmp,
                    f"{name}{spec}",
                ],
                check=True,
            )
            (wheel,) = Path(tmp).glob("*.whl")
            dest = self.folder / wheel.name
            for old in self.folder.glob(f"{wheel.name.split('-')[0]}-*.whl"):
                old.unlink()  # one version of each
            shutil.move(str(wheel), dest)
            return dest


def kiln_wheel(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(folder), str(ROOT)],
        check=True,
    )
    (wheel,) = folder.glob("kiln-*.whl")
    return wheel


def stand_in_version(spec: SpecifierSet) -> str:
    """A version inside `spec` for a device package whose version was not read: the device is
    trusted to satisfy what asks for it, so its stand-in does."""
    bounds = [s.version.replace(".*", "") for s in spec] + ["0", "999"]
    inside = [v for v in bounds if spec.contains(v, prereleases=True)]
    return max(inside, key=Version) if inside else "999"


def check_installable(
    wheels: Path, runtime: Path | None, device: dict[str, str | None], plan: Plan
) -> None:
    """pip's resolver, offline, over the carried wheels plus stand-ins for what the device
    has (empty wheels of the device's versions, or of a version inside what asked for it
    where the version was not read)."""
    with tempfile.TemporaryDirectory() as tmp:
        stand_ins = Path(tmp)
        for name, version in device.items():
            spec = plan.device_specifiers.get(name, SpecifierSet())
            _empty_wheel(stand_ins, name, version or stand_in_version(spec))
        kiln = next(wheels.glob("kiln-*.whl"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--dry-run",
                "-q",
                "--no-index",
                "--ignore-installed",
                *TARGET,
                "--target",
                str(stand_ins / "t"),
                "--find-links",
                str(wheels),
                "--find-links",
                str(stand_ins),
                *(["--find-links", str(runtime.parent)] if runtime else []),
                f"{kiln}[{','.join(EXTRAS)}]",
                *([str(runtime)] if runtime else []),
            ],
            check=True,
        )


def _empty_wheel(folder: Path, name: str, version: str) -> None:
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        info = f"{dist}.dist-info"
        wheel.writestr(
            f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        )
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


def build(out: Path, with_ort: bool = False) -> dict[str, object]:
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    device = read_device_packages()
    kiln = kiln_wheel(wheels)
    roots = [(r, "kiln") for r in requirements_of(kiln, frozenset(EXTRAS))]
    if with_ort:
        roots.append((Requirement(RUNTIME), "kit"))
    plan = walk(roots, device, Fetch(wheels))
    fallbacks = carry_fallbacks(plan, device, Fetch(wheels))
    if plan.conflicts:
        raise SystemExit("error: " + "; ".join(plan.conflicts))
    runtime = _park(plan, out) if with_ort else None
    check_installable(wheels, runtime, device, plan)
    carried = sorted(p.name for p in wheels.glob("*.whl"))
    summary: dict[str, object] = {
        "roots": [f"kiln[{','.join(EXTRAS)}]"],
        "carried": carried,
        "fallbacks": fallbacks,
        "trustedToTheDevice": {k: sorted(set(v)) for k, v in sorted(plan.on_device.items())},
    }
    if runtime is not None:
        summary["runtime"] = split(runtime, out / "ort")
        shutil.rmtree(runtime.parent)
    (wheels / "plan.json").write_text(json.dumps(summary, indent=2) + "\n")  # it travels
    size = sum(p.stat().st_size for p in wheels.glob("*.whl")) / 2**20
    parts = f", {RUNTIME} in parts under {out / 'ort'}" if with_ort else ""
    print(f"{wheels}: {len(carried)} wheels, {size:.1f} MiB{parts}; see tests/gpu/README.md")
    return summary


def carry_fallbacks(
    plan: Plan, device: dict[str, str | None], fetch: Callable[[str, SpecifierSet], Path]
) -> dict[str, str]:
    """A wheel for each device package whose version was never read but that something asks a
    version of (pydantic wants a recent typing-extensions, say): the device's install step
    uses it only where pip finds the device's own copy too old (tests/gpu/install.py). What a
    fallback needs in turn is walked like the rest: trusted to the device, or carried."""
    found: dict[str, str] = {}
    needs: list[tuple[Requirement, str]] = []
    for name, spec in sorted(plan.device_specifiers.items()):
        if device.get(name, "") is None and str(spec):
            wheel = fetch(name, spec)
            found[name] = wheel.name
            needs += [(r, f"{name} (fallback)") for r in requirements_of(wheel, frozenset())]
    more = walk(needs, device, fetch)
    plan.wheels.update(more.wheels)
    for name, askers in more.on_device.items():
        plan.on_device.setdefault(name, []).extend(askers)
    plan.conflicts += more.conflicts
    return found


def _park(plan: Plan, out: Path) -> Path:
    """The runtime's wheel out of the carried folder (it travels in parts)."""
    runtime = plan.wheels.pop(canonicalize_name(RUNTIME))
    parked = out / "runtime"
    parked.mkdir()
    return Path(shutil.move(str(runtime), parked / runtime.name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu-kit")
    parser.add_argument(
        "--with-ort", action="store_true", help=f"also {RUNTIME} in parts (a longer lease)"
    )
    args = parser.parse_args()
    build(args.out, args.with_ort)
    return 0


if __name__ == "__main__":
    sys.exit(main())
