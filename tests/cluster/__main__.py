"""`python -m tests.cluster build|up|dev-up|down|status` (what make cluster-bin, cluster-up,
dev-up, cluster-down and dev-down run)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from tests.cluster import binaries, cluster, dev

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".kiln" / "cluster"


def _publish() -> None:
    """The running cluster's kubeconfig and S3 credentials where the README says they are."""
    shutil.copy(ROOT / "kubeconfig", REPO / ".kiln" / "kubeconfig")
    shutil.copy(ROOT / "s3.env", REPO / ".kiln" / "s3.env")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster")
    parser.add_argument("command", choices=["build", "up", "dev-up", "down", "status"])
    parser.add_argument("--nodes", type=Path, default=None, help="node set YAML")
    args = parser.parse_args()
    try:
        if args.command == "build":
            started = time.monotonic()
            for name, path in binaries.ensure().items():
                print(f"{name}: {path}")
            print(f"binaries ready in {time.monotonic() - started:.1f}s")
        elif args.command == "dev-up":
            dev.main(ROOT, REPO / ".kiln")
            _publish()
        elif args.command == "up":
            started = time.monotonic()
            kwargs = {"node_set": args.nodes} if args.nodes else {}
            info = cluster.up(ROOT, **kwargs)
            _publish()
            print(f"cluster up in {time.monotonic() - started:.1f}s")
            print(
                f"  kubectl --kubeconfig .kiln/kubeconfig get nodes  (kubectl: {info.kubectl()[0]})"
            )
            print(f"  S3: {info.s3_endpoint} bucket {info.bucket}; credentials in .kiln/s3.env")
            print(f"  logs: {ROOT / 'logs'}")
        elif args.command == "down":
            stopped = cluster.down(ROOT)
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            state = ROOT / "cluster.json"
            print(state.read_text() if state.exists() else json.dumps({"running": False}))
    except binaries.ComponentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
