"""`python -m tests.images build` (what `make images` runs): Kiln's images, with build times
and sizes printed; `python -m tests.images base` (`make image-base`): only the debootstrap base.

    python -m tests.images build [--targets operator builder builder-gpu]
        [--base auto|registry|debootstrap] [--tensorrt auto|yes|no] [--registry PREFIX]
    python -m tests.images base
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.images import base, build
from tests.images.engine import NoEngineError, find_engine


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.images")
    parser.add_argument("command", choices=["build", "base"])
    parser.add_argument("--targets", nargs="+", choices=build.TARGETS, default=build.TARGETS)
    parser.add_argument("--base", type=build.BaseChoice, default=build.BaseChoice.AUTO)
    parser.add_argument("--tensorrt", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--registry", default="", help="name prefix, for pushing (host/org)")
    args = parser.parse_args()
    try:
        engine = find_engine()
        build.LOGS.mkdir(parents=True, exist_ok=True)
        if args.command == "base":
            image = base.ensure_base(engine, build.LOGS / "base.log")
            print(f"{image}: {engine.size_bytes(image) / 10**6:.0f} MB", flush=True)
            return 0
        base_image = build.pick_base(engine, args.base, build.LOGS / "base.log")
        print(f"engine: {engine.tool.value}; base: {base_image}", flush=True)
        for target in args.targets:
            built = build.build(engine, target, base_image, args.tensorrt, args.registry)
            print(built.line(), flush=True)
            if target == "operator" and built.size_bytes > build.OPERATOR_BUDGET_BYTES:
                budget = build.OPERATOR_BUDGET_BYTES // 10**6
                print(f"  over the operator image's budget of {budget} MB", flush=True)
                return 1
            if target == "builder-gpu":
                print("  " + build.tensorrt_record(engine, built.image), flush=True)
    except (NoEngineError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
