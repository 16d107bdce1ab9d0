"""The kit's install step on the device: what to install is decided there, by pip's own
resolver against the device's installed packages, and only that lands in the site folder.

    python3 tests/gpu/install.py KIT_WHEELS SITE [MORE_WHEELS ...]

1. `pip install --dry-run --report` of the kit's roots (plan.json) with the carried wheels as
   the only index: pip keeps every installed package that satisfies what asks for it and
   reports the rest, a too-old package the device has included (the kit carries a fallback for
   each device package whose version was never read).
2. `pip install --no-deps --target SITE` of exactly the reported wheels.

Nothing in the device's own environment changes. Standard library only."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

PIP = [sys.executable, "-m", "pip"]


def resolve(roots: list[str], folders: list[Path]) -> list[Path]:
    """The wheels pip would install here for `roots` from `folders` alone."""
    links = [a for f in folders if f.is_dir() for a in ("--find-links", str(f))]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        dry = ["install", "--dry-run", "-q", "--no-index", "--report", str(report)]
        subprocess.run([*PIP, *dry, *links, *roots], check=True)
        planned = json.loads(report.read_text())["install"]
    return [Path(unquote(urlparse(item["download_info"]["url"]).path)) for item in planned]


def install(wheels: list[Path], site: Path) -> None:
    offline = ["install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
    target = ["--upgrade", "--target", str(site)]
    subprocess.run([*PIP, *offline, *target, *map(str, wheels)], check=True)


def main(kit: Path, site: Path, more: list[Path]) -> int:
    plan = json.loads((kit / "plan.json").read_text())
    roots = list(plan["roots"]) + [w.name.split("-")[0].replace("_", "-") for w in more]
    wheels = resolve(roots, [kit, *{w.parent for w in more}])
    install(wheels, site)
    names = ", ".join(sorted(w.name.split("-")[0] for w in wheels))
    print(f"installed {len(wheels)} wheels into {site}: {names}")
    kept = sorted({p.name for p in kit.glob("*.whl")} - {w.name for w in wheels})
    print(f"the device's own packages kept instead of {len(kept)} carried: {', '.join(kept)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(a) for a in sys.argv[3:]]))
