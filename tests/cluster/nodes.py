"""Simulated nodes as data: a node set (YAML) of pools, rendered into kwok-managed Node objects
carrying the labels and allocatable resources NVIDIA's GPU operator puts on real GPU nodes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
HERE = Path(__file__).resolve().parent
DEFAULT_SET = HERE / "nodes" / "default.yaml"


def load(path: Path = DEFAULT_SET) -> list[dict[str, Any]]:
    pools = yaml.safe_load(path.read_text())["pools"]
    if not isinstance(pools, list):
        raise ValueError(f"{path}: `pools` must be a list")
    return pools


def render(pools: list[dict[str, Any]], scale: int = 1) -> list[dict[str, Any]]:
    """Node manifests; `scale` multiplies every pool's count (1 node or 1,000 from one file)."""
    nodes: list[dict[str, Any]] = []
    for pool in pools:
        for i in range(int(pool.get("count", 1)) * scale):
            name = f"kwok-{pool['name']}-{i}"
            labels = {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kiln.dev/pool": pool["name"],
                **{k: str(v) for k, v in pool.get("labels", {}).items()},
            }
            resources = {k: str(v) for k, v in pool.get("allocatable", {}).items()}
            nodes.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": name,
                        "labels": labels,
                        "annotations": {
                            KWOK_ANNOTATION: "fake",
                            "node.alpha.kubernetes.io/ttl": "0",
                        },
                    },
                    "spec": {"taints": pool.get("taints", [])},
                    "status": {"allocatable": resources, "capacity": resources},
                }
            )
    return nodes
