"""examples/registry/, the overlay README's install section tells a user to copy, renders with
every image Kiln runs taken from the user's registry (kubectl's own kustomize)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from kiln.api.version import VERSION
from tests.cluster.cluster import ClusterInfo

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).parents[2]
REGISTRY = "registry.example.com/ml"


def test_the_registry_overlay_names_every_image_from_the_registry(cluster: ClusterInfo) -> None:
    rendered = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "kustomize", str(REPO / "examples" / "registry")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    images = {c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]}
    assert images == {f"{REGISTRY}/kiln-operator:{VERSION}"}
    (config,) = [d for d in documents if d["kind"] == "ConfigMap"]
    for key in ("KILN_BUILDER_IMAGE", "KILN_SERVER_IMAGE"):
        assert config["data"][key] == f"{REGISTRY}/kiln-builder-gpu:{VERSION}", key
    # the rest of the install is the base's, untouched
    assert config["data"]["KILN_ARTIFACTS_URI"]
