"""Kiln installed on the local cluster the way a user installs it: `manifests/` rendered by
kustomize and applied server-side (dry run first), the S3 credentials Secret, and the operator
started from the rendered Deployment itself (its command, ConfigMap and Secret environment, the
ServiceAccount's token), with only the image replaced by a local process.

Shared by the e2e tier, `make dev-up` and benchmarks/operator_reconcile.py."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.binaries import ComponentError
from tests.cluster.cluster import ClusterInfo
from tests.cluster.executor import launch
from tests.cluster.processes import free_port

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "kiln-system"
CRD = "optimizedmodels.kiln.dev"


def kubectl(info: ClusterInfo, *args: str, stdin: str | None = None) -> str:
    command = [*info.kubectl(), *args]
    proc = subprocess.run(command, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ComponentError("kubectl", proc.stderr.strip(), None, command)
    return proc.stdout


def install(info: ClusterInfo, overlay: Path | None = None) -> list[dict[str, Any]]:
    """Apply manifests/, or an overlay of it (CRDs, RBAC, operator config and Deployment); the
    rendered documents. A server-side dry run cannot create the namespace its other objects
    live in, so the Namespace goes first, then a dry run of everything, then the real apply."""
    rendered = kubectl(info, "kustomize", str(overlay or REPO / "manifests"))
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    namespaces = [d for d in documents if d["kind"] == "Namespace"]
    kubectl(info, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(namespaces))
    kubectl(info, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=rendered)
    kubectl(info, "apply", "--server-side", "-f", "-", stdin=rendered)
    kubectl(info, "wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=60s")
    return documents


def s3_secret(info: ClusterInfo, namespace: str, name: str = "kiln-s3") -> None:
    """The credentials Secret builders, servers (and the operator) take their S3 access from."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": info.s3_env,
    }
    kubectl(info, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(secret))


def service_account_kubeconfig(
    info: ClusterInfo,
    path: Path,
    hours: int = 24,
    account: str = "kiln-operator",
    namespace: str = OPERATOR_NAMESPACE,
) -> Path:
    """A kubeconfig with the operator ServiceAccount's token: exactly what manifests/ grants."""
    token = kubectl(
        info, "create", "token", account, "-n", namespace, f"--duration={hours}h"
    ).strip()
    admin = yaml.safe_load(info.kubeconfig.read_text())
    cluster_name = admin["clusters"][0]["name"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kiln-operator",
        "clusters": admin["clusters"],
        "users": [{"name": "kiln-operator", "user": {"token": token}}],
        "contexts": [
            {"name": "kiln-operator", "context": {"cluster": cluster_name, "user": "kiln-operator"}}
        ],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class OperatorCommand:
    argv: list[str]
    env: dict[str, str]
    liveness: str
    pod_env: dict[str, str]  # what the container itself is given: no variable of this machine
    kubeconfig: Path


def downward_api(spec: dict[str, Any], name: str, namespace: str) -> dict[str, str]:
    """The first container's variables from its pod's own fields, as the kubelet fills them in
    (the executor leaves `fieldRef` out): the pod's name, namespace and ServiceAccount."""
    fields = {
        "metadata.name": name,
        "metadata.namespace": namespace,
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
    }
    return {
        item["name"]: fields[ref["fieldPath"]]
        for item in spec["containers"][0].get("env", [])
        if (ref := item.get("valueFrom", {}).get("fieldRef")) and ref["fieldPath"] in fields
    }


def operator_command(
    info: ClusterInfo,
    documents: list[dict[str, Any]],
    folder: Path,
    *extra: str,
    identity: str | None = None,
) -> OperatorCommand:
    """The rendered operator Deployment's container as a local command (the executor's own
    translation of a pod), under the ServiceAccount's token and on a free liveness port.
    `identity` is the pod's name (the leader-election identity); by default one per `folder`,
    so the same command started again is the same pod's container restarting."""
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    configmaps = {
        d["metadata"]["name"]: d.get("data", {}) for d in documents if d["kind"] == "ConfigMap"
    }
    template = deployment["spec"]["template"]
    pod = {"metadata": template.get("metadata", {}), "spec": template["spec"]}
    folder.mkdir(parents=True, exist_ok=True)
    venv_bin = Path(sys.executable).parent
    started = launch(pod, folder, configmaps, {"kiln-s3": info.s3_env}, venv_bin)
    if started.argv[:2] != [str(venv_bin / "kiln"), "operator"]:
        raise ComponentError(
            "operator", "the Deployment does not run `kiln operator`", None, started.argv
        )
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    # The Deployment's own ServiceAccount and namespace: an overlay may rename or move them.
    namespace = deployment["metadata"].get("namespace", OPERATOR_NAMESPACE)
    kubeconfig = service_account_kubeconfig(
        info,
        folder / "operator.kubeconfig",
        account=template["spec"].get("serviceAccountName", "default"),
        namespace=namespace,
    )
    argv = [*started.argv, "--kubeconfig", str(kubeconfig), "--liveness", liveness, *extra]
    # Nothing of this machine's credentials: the operator gets what the manifests give it.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBECONFIG"))}
    pod_name = identity or f"{deployment['metadata']['name']}-{folder.name}"
    fields = downward_api(template["spec"], pod_name, namespace)
    pod_env = {**started.env, **fields, "PYTHONUNBUFFERED": "1"}
    return OperatorCommand(argv, {**base, **pod_env}, liveness, pod_env, kubeconfig)
