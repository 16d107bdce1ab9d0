"""Static checks of manifests/ (the integration tier applies them to a real API server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kiln.api.load import parse_document

ROOT = Path(__file__).parents[2] / "manifests"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_kustomization_resource_exists() -> None:
    for kustomization in ROOT.rglob("kustomization.yaml"):
        for resource in documents(kustomization)[0].get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


def test_samples_are_valid_optimizedmodels() -> None:
    for sample in (ROOT / "samples").glob("*.yaml"):
        (doc,) = documents(sample)
        model = parse_document(doc, str(sample))
        assert model.spec.source.uri.startswith("s3://")


def _rules() -> set[tuple[str, str, str]]:
    (role, _binding) = documents(ROOT / "operator" / "rbac.yaml")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_grants_what_the_operator_calls_and_no_wildcards() -> None:
    rules = _rules()
    assert not any("*" in part for rule in rules for part in rule)
    # Mirrors kiln.operator.observe/apply and Kopf's needs; the integration tier proves it by
    # running the operator under this ServiceAccount.
    needed = {
        ("kiln.dev", "optimizedmodels", "watch"),
        ("kiln.dev", "optimizedmodels", "patch"),
        ("kiln.dev", "optimizedmodels/status", "patch"),
        ("", "nodes", "list"),
        ("batch", "jobs", "list"),
        ("batch", "jobs", "patch"),
        ("batch", "jobs", "create"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "create"),
        ("", "services", "patch"),
        ("", "services", "create"),
        ("apps", "deployments", "list"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "create"),
        ("apps", "deployments/scale", "patch"),
        ("", "pods", "list"),
        ("", "events", "create"),
    }
    assert needed <= rules
    assert ("", "secrets", "get") not in rules  # credentials reach pods by reference only


def test_operator_deployment_is_locked_down() -> None:
    (deploy,) = documents(ROOT / "operator" / "deployment.yaml")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kiln-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "limits" in container["resources"]
