"""Namespaced mode end to end on the local cluster: Kiln installed through the example overlay
examples/namespaced/ (manifests/ plus the component manifests/components/namespaced), the
operator started from the rendered Deployment under its ServiceAccount's token, watching two
namespaces named by KILN_NAMESPACES in its ConfigMap, and not a third.

The session's cluster may already hold the cluster-wide install (test_operator.py and the
integration tier apply manifests/), whose ClusterRoleBinding grants kiln-system/kiln-operator
its rules in every namespace. So that nothing here depends on the order of the tests, this
module's overlay adds a name prefix: its ServiceAccount, ClusterRoles, bindings, ConfigMap,
Deployment and leader-election Lease are its own, and only the CRD and the kiln-system
Namespace are shared (kustomize prefixes neither). The helpers come from test_operator.py, the
tier's one copy of them."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.cluster import ClusterInfo
from tests.cluster.install import OPERATOR_NAMESPACE, install, kubectl, operator_command, s3_secret
from tests.cluster.models import upload_tiny
from tests.e2e.test_operator import (
    GROUP,
    PLURAL,
    VERSION,
    Operator,
    apply,
    delete_and_wait_for_collection,
    job_names,
    ready,
    ready_from_storage,
    resource,
    wait_status,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).parents[2]
EXAMPLE = REPO / "examples" / "namespaced"
PREFIX = "e2e-namespaced-"
ACCOUNT = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{PREFIX}kiln-operator"
# How long to wait, once the watched namespaces are done, before looking for any trace of the
# operator in the third; its resource was created first, so an operator serving it has had all
# their time as well, plus this.
MARGIN_SECONDS = 15.0


@dataclass(frozen=True)
class Namespaced:
    op: Operator
    watched: tuple[str, str]
    unwatched: str
    kubeconfig: Path  # the operator ServiceAccount's token


def write_overlay(folder: Path, watched: tuple[str, str]) -> Path:
    """The example overlay as a user adapts it: its two RoleBindings moved to the namespaces
    watched here (the patch the component's comment describes), KILN_NAMESPACES naming them
    with a comma and a space (the CLI splits on both), and this module's name prefix."""

    def move(namespace: str, to: str) -> dict[str, Any]:
        return {
            "target": {"kind": "RoleBinding", "name": "kiln-operator", "namespace": namespace},
            "patch": yaml.safe_dump(
                [{"op": "replace", "path": "/metadata/namespace", "value": to}]
            ),
        }

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kiln-operator"},
        "data": {
            "KILN_NAMESPACES": ", ".join(watched),
            # The prefix renames the Lease in the leader-election Role as well (kustomize takes
            # a Role's resourceNames equal to the ConfigMap's name for references to it), which
            # also keeps this operator's Lease apart from the cluster-wide install's.
            "KILN_LEASE_NAME": f"{PREFIX}kiln-operator",
        },
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        # kustomize takes no absolute path to a base
        "resources": [os.path.relpath(EXAMPLE, folder)],
        "namePrefix": PREFIX,
        "patches": [
            move("models", watched[0]),
            move("ml-team", watched[1]),
            {"patch": yaml.safe_dump(config_map)},
        ],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def namespaced(
    cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Namespaced]:
    folder = tmp_path_factory.mktemp("e2e-namespaced")
    suffix = uuid.uuid4().hex[:6]
    watched = (f"watched-a-{suffix}", f"watched-b-{suffix}")
    unwatched = f"unwatched-{suffix}"
    # The namespaces exist before the install (their RoleBindings live in them), each with the
    # credentials Secret its builders and servers reference: the third one lacks only a place
    # in the operator's list and its RoleBinding.
    core = client.CoreV1Api(cluster.api_client())
    for ns in (*watched, unwatched):
        core.create_namespace({"metadata": {"name": ns}})
        s3_secret(cluster, ns)
    documents = install(cluster, write_overlay(folder / "overlay", watched))
    s3_secret(cluster, OPERATOR_NAMESPACE)
    upload_tiny(cluster, folder)
    # No --namespace flag: the list reaches `kiln operator` through the ConfigMap alone.
    command = operator_command(cluster, documents, folder / "operator", "--resync-seconds", "30")
    op = Operator(cluster, command.argv, command.env, folder / "operator.log", command.liveness)
    op.start()
    try:
        yield Namespaced(op, watched, unwatched, folder / "operator" / "operator.kubeconfig")
    finally:
        op.stop()
        print(op.log.read_text(errors="replace")[-5000:])
        # This module's own RBAC, ConfigMap and Deployment go; the shared CRD and kiln-system
        # stay (other tests of the session use them).
        own = [d for d in documents if d["metadata"]["name"].startswith(PREFIX)]
        kubectl(cluster, "delete", "--ignore-not-found", "-f", "-", stdin=yaml.safe_dump_all(own))


def can(info: ClusterInfo, verb: str, kind: str, *where: str) -> bool:
    """The API server's own RBAC evaluator (a SelfSubjectAccessReview, impersonating the
    operator's ServiceAccount); `where` is `-n NS` or `--all-namespaces`, none for a
    cluster-scoped kind."""
    name, _, sub = kind.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    argv = [*info.kubectl(), "auth", "can-i", verb, name, *extra, *where, f"--as={ACCOUNT}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    answer = out.stdout.strip()
    # exit 0 is "yes", 1 is "no"; an error, or a resource the server does not know (a typo,
    # answered "no" with a warning), must not read as a refusal
    assert (out.returncode, answer) in ((0, "yes"), (1, "no")), (argv, out.stderr)
    assert "doesn't have a resource type" not in out.stderr, (argv, out.stderr)
    return answer == "yes"


def test_the_example_overlay_binds_exactly_the_namespaces_it_watches(cluster: ClusterInfo) -> None:
    """examples/namespaced/ as shipped: a RoleBinding of the operator's ClusterRole in each
    namespace of KILN_NAMESPACES and in no other, no ClusterRoleBinding of that ClusterRole, and
    cluster-wide only reads of cluster-scoped objects."""
    rendered = [d for d in yaml.safe_load_all(kubectl(cluster, "kustomize", str(EXAMPLE))) if d]
    (config_map,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    listed = config_map["data"]["KILN_NAMESPACES"].replace(",", " ").split()
    bound = [
        d["metadata"]["namespace"]
        for d in rendered
        if d["kind"] == "RoleBinding"
        and (d["roleRef"]["kind"], d["roleRef"]["name"]) == ("ClusterRole", "kiln-operator")
    ]
    assert sorted(bound) == sorted(listed) == ["ml-team", "models"]
    cluster_bindings = {d["roleRef"]["name"] for d in rendered if d["kind"] == "ClusterRoleBinding"}
    assert cluster_bindings == {"kiln-operator-cluster"}
    (cluster_role,) = [
        d
        for d in rendered
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "kiln-operator-cluster"
    ]
    for rule in cluster_role["rules"]:
        assert set(rule["verbs"]) <= {"list", "watch"}, rule
        assert set(rule["resources"]) <= {"nodes", "namespaces", "customresourcedefinitions"}


# What the operator does in a namespace it serves (kiln.operator.observe/apply and Kopf).
SERVING = [
    ("watch", "optimizedmodels.kiln.dev"),
    ("patch", "optimizedmodels.kiln.dev"),
    ("patch", "optimizedmodels.kiln.dev/status"),
    ("create", "jobs.batch"),
    ("watch", "jobs.batch"),
    ("patch", "deployments.apps"),
    ("patch", "deployments.apps/scale"),
    ("create", "configmaps"),
    ("create", "services"),
    ("list", "pods"),
    ("create", "events"),
]


def test_rbac_holds_in_the_watched_namespaces_only(namespaced: Namespaced) -> None:
    info = namespaced.op.cluster
    for ns in namespaced.watched:
        for verb, kind in SERVING:
            assert can(info, verb, kind, "-n", ns), f"{ns}: the operator needs {verb} {kind}"
    # Neither read nor write in the third namespace, nor in its own, nor across namespaces.
    reads = [("get", "optimizedmodels.kiln.dev"), ("list", "jobs.batch"), ("get", "configmaps")]
    for where in (["-n", namespaced.unwatched], ["-n", OPERATOR_NAMESPACE], ["--all-namespaces"]):
        for verb, kind in [*SERVING, *reads]:
            assert not can(info, verb, kind, *where), f"{where}: {verb} {kind} granted"
    # Cluster-wide, only the reads a namespaced operator still makes: GPU types from nodes,
    # Kopf's namespace and CRD discovery; nothing it could change.
    for verb, kind in [
        ("watch", "nodes"),
        ("watch", "namespaces"),
        ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert can(info, verb, kind), f"the operator needs {verb} {kind}"
    for verb, kind in [
        ("get", "nodes"),
        ("patch", "nodes"),
        ("create", "namespaces"),
        ("get", "namespaces"),
        ("patch", "customresourcedefinitions.apiextensions.k8s.io"),
    ]:
        assert not can(info, verb, kind), f"{verb} {kind} granted cluster-wide"

    # And under the ServiceAccount's own token, a read in the third namespace is refused.
    api = config.new_client_from_config(config_file=str(namespaced.kubeconfig))
    custom = client.CustomObjectsApi(api)
    custom.list_namespaced_custom_object(GROUP, VERSION, namespaced.watched[0], PLURAL)
    with pytest.raises(client.ApiException) as refused:
        custom.list_namespaced_custom_object(GROUP, VERSION, namespaced.unwatched, PLURAL)
    assert refused.value.status == 403


def test_the_watched_namespaces_are_served_and_the_third_is_left_alone(
    namespaced: Namespaced,
) -> None:
    op = namespaced.op
    (first, second), third = namespaced.watched, namespaced.unwatched
    # The third first: it waits longer than either watched one for an operator to notice it.
    apply(op, resource("tiny", third))
    # The first builds for real unless an earlier test of the session stored the same results;
    # the second then finds them in storage (no builder run, no Job).
    apply(op, resource("tiny", first))
    statuses = {first: wait_status(op, first, "tiny", ready(), "phase Ready", timeout=600)}
    statuses[second] = ready_from_storage(op, second, "tiny")

    apps, batch = client.AppsV1Api(op.api()), client.BatchV1Api(op.api())
    core, custom = client.CoreV1Api(op.api()), client.CustomObjectsApi(op.api())
    for ns, status in statuses.items():
        cpu = next(t for t in status["targets"] if t["name"] == "cpu")
        assert cpu["readyReplicas"] == 1
        deploy = apps.read_namespaced_deployment("tiny-cpu", ns)
        assert deploy.metadata.owner_references[0].kind == "OptimizedModel"
        assert core.read_namespaced_service("tiny-cpu", ns).metadata.owner_references
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "tiny")
        assert obj["metadata"]["finalizers"] == ["kiln.dev/finalizer"]

    time.sleep(MARGIN_SECONDS)
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, third, PLURAL, "tiny")
    assert "status" not in obj, obj["status"]
    assert not obj["metadata"].get("finalizers")  # Kopf adds its finalizer to what it serves
    assert job_names(op, third) == set()
    assert not apps.list_namespaced_deployment(third).items
    assert not batch.list_namespaced_job(third).items
    assert not core.list_namespaced_service(third).items
    # kube-root-ca.crt is the namespace's own; a request ConfigMap would be the operator's
    configmaps = {c.metadata.name for c in core.list_namespaced_config_map(third).items}
    assert configmaps == {"kube-root-ca.crt"}
    assert not core.list_namespaced_event(third).items

    # Kopf had every permission it asks for: it logs a fallback or a refusal otherwise.
    log = op.log.read_text(errors="replace")
    for refusal in ("Not enough permissions", "Forbidden"):
        assert refusal not in log, f"{refusal!r} in the operator's log"
    assert third not in log

    for ns in namespaced.watched:
        delete_and_wait_for_collection(op, ns, "tiny")
    # Nothing serves the third one, so nothing holds it back: no finalizer.
    kubectl(op.cluster, "delete", PLURAL, "tiny", "-n", third, "--wait=true", "--timeout=60s")
