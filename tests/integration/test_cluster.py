"""The local cluster is a real Kubernetes control plane: schema validation by the API server,
scheduling onto simulated GPU nodes, garbage collection, watch expiry, and real commands run
for builder pods."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster.cluster import ClusterInfo
from tests.cluster.install import install

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CRDS = Path(__file__).parents[2] / "crds"


def eventually(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def namespace(info: ClusterInfo) -> str:
    name = f"t-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(info.api_client()).create_namespace({"metadata": {"name": name}})
    return name


def job(
    name: str,
    node_selector: dict[str, str],
    labels: dict[str, str] | None = None,
    command: list[str] | None = None,
    **container: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": node_selector,
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "command": command or ["true"],
                            **container,
                        }
                    ],
                },
            },
        },
    }


def test_simulated_gpu_nodes_carry_gpu_operator_labels(cluster: ClusterInfo) -> None:
    out = subprocess.run(
        [*cluster.kubectl(), "get", "nodes", "-L", "nvidia.com/gpu.product"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for product in ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A10G", "NVIDIA-L4"):
        assert product in out
    core = client.CoreV1Api(cluster.api_client())
    l4 = core.read_node("kwok-l4-0")
    assert l4.status.allocatable["nvidia.com/gpu"] == "1"
    assert eventually(
        lambda: any(
            c.type == "Ready" and c.status == "True"
            for c in core.read_node("kwok-l4-0").status.conditions or []
        ),
        what="kwok to mark the node Ready",
    )


def test_crd_schema_rejects_a_bad_spec_with_the_servers_message(cluster: ClusterInfo) -> None:
    subprocess.run(
        [
            *cluster.kubectl(),
            "apply",
            "--server-side",
            "-f",
            str(CRDS / "kiln.dev_optimizedmodels.yaml"),
        ],
        check=True,
        capture_output=True,
    )
    ns = namespace(cluster)
    custom = client.CustomObjectsApi(cluster.api_client())

    def body(shape: list[int]) -> dict[str, Any]:
        return {
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "OptimizedModel",
            "metadata": {"name": f"m{len(shape)}{abs(shape[1])}"},
            "spec": {
                "source": {"uri": "s3://b/m.onnx"},
                "precisions": ["fp32"],
                "inputs": [{"name": "x", "shape": shape}],
                "outputs": ["y"],
            },
        }

    def create() -> Any:
        return custom.create_namespaced_custom_object(
            "kiln.dev", "v1alpha1", ns, "optimizedmodels", body([-1, 3])
        )

    eventually(lambda: _established(create), what="the CRD to be served")

    # Shapes and dynamic axes: the CEL rules refuse what Kiln's validation refuses.
    def tensor(name: str, shape: list[int], dynamic: list[Any] | None) -> dict[str, Any]:
        document = body(shape)
        document["metadata"]["name"] = name
        if dynamic is not None:
            document["spec"]["inputs"][0]["dynamic"] = dynamic
        return document

    seq = {"axis": 1, "min": 8, "max": 128}
    shapes: list[tuple[str, list[int], list[Any] | None, str]] = [
        ("norange", [-1, -1], None, "every -1 but the batch axis needs a dynamic entry"),
        ("fixedaxis", [-1, 4], [seq], "every -1 but the batch axis needs a dynamic entry"),
        ("twice", [-1, -1], [seq, seq], "every -1 but the batch axis needs a dynamic entry"),
        ("negative", [-1, -3], None, "dimensions must be positive, or -1 for a dynamic axis"),
        ("empty", [-1, -1], [{**seq, "max": 8}], "expected min < max and min <= opt <= max"),
        ("opt", [-1, -1], [{**seq, "opt": 200}], "expected min < max and min <= opt <= max"),
    ]
    for name, shape, dynamic, message in shapes:
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(
                "kiln.dev", "v1alpha1", ns, "optimizedmodels", tensor(name, shape, dynamic)
            )
        assert info.value.status == 422, name
        # The server escapes < and > in its JSON body.
        assert message in json.loads(info.value.body)["message"], info.value.body
    custom.create_namespaced_custom_object(
        "kiln.dev", "v1alpha1", ns, "optimizedmodels", tensor("seq", [-1, -1, 4], [seq])
    )
    # The calibrator NNCF does not have, named for NNCF: refused as Kiln refuses it.
    entropy = tensor("entropy", [-1, 3], None)
    entropy["spec"]["calibration"] = {"uri": "s3://b/c", "quantizer": "nncf", "method": "entropy"}
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            "kiln.dev", "v1alpha1", ns, "optimizedmodels", entropy
        )
    assert info.value.status == 422
    assert "method: entropy is ONNX Runtime's calibrator" in info.value.body, info.value.body
    # A recurrent state batched on axis 1, and an input with no batch axis: the server keeps
    # the explicit null (nullable), which Kiln reads as "no batch axis", not as axis 0.
    state = tensor("state", [2, -1, 4], None)
    state["spec"]["inputs"][0]["batchAxis"] = 1
    state["spec"]["inputs"].append({"name": "sr", "shape": [], "dtype": "int64"})
    state["spec"]["inputs"].append({"name": "h", "shape": [1, 4], "batchAxis": None})
    custom.create_namespaced_custom_object("kiln.dev", "v1alpha1", ns, "optimizedmodels", state)
    stored = custom.get_namespaced_custom_object(
        "kiln.dev", "v1alpha1", ns, "optimizedmodels", "state"
    )
    assert [t.get("batchAxis", "absent") for t in stored["spec"]["inputs"]] == [1, "absent", None]
    outside = tensor("outside", [2, 4], None)
    outside["spec"]["inputs"][0]["batchAxis"] = 2
    with pytest.raises(ApiException) as info:
        custom.create_namespaced_custom_object(
            "kiln.dev", "v1alpha1", ns, "optimizedmodels", outside
        )
    assert "batchAxis must be an axis of shape" in json.loads(info.value.body)["message"]

    # serving.replicas is an int-or-string: a count, or 'auto' with a target throughput.
    def serving(name: str, value: dict[str, Any]) -> dict[str, Any]:
        document = body([-1, 3])
        document["metadata"]["name"] = name
        document["spec"]["serving"] = value
        return document

    refused: list[tuple[str, dict[str, Any], str]] = [
        ("words", {"replicas": "many"}, "expected an integer in [0, 1000] or one of ['auto']"),
        ("toomany", {"replicas": 5000}, "expected an integer in [0, 1000]"),
        ("auto", {"replicas": "auto"}, "replicas: 'auto' needs serving.targetThroughput"),
    ]
    for name, value, message in refused:
        with pytest.raises(ApiException) as info:
            custom.create_namespaced_custom_object(
                "kiln.dev", "v1alpha1", ns, "optimizedmodels", serving(name, value)
            )
        assert info.value.status == 422, name
        assert message in info.value.body, info.value.body
    accepted: list[tuple[str, dict[str, Any]]] = [
        ("count", {"replicas": 3}),
        ("planned", {"replicas": "auto", "targetThroughput": 100}),
    ]
    for name, value in accepted:
        custom.create_namespaced_custom_object(
            "kiln.dev", "v1alpha1", ns, "optimizedmodels", serving(name, value)
        )


def _established(create: Callable[[], Any]) -> bool:
    try:
        create()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_job_lands_on_the_gpu_type_its_selector_names_and_completes(cluster: ClusterInfo) -> None:
    ns = namespace(cluster)
    batch = client.BatchV1Api(cluster.api_client())
    core = client.CoreV1Api(cluster.api_client())
    batch.create_namespaced_job(
        ns,
        job(
            "on-l4",
            {"nvidia.com/gpu.product": "NVIDIA-L4"},
            resources={"limits": {"nvidia.com/gpu": "1"}},
        ),
    )
    batch.create_namespaced_job(ns, job("nowhere", {"nvidia.com/gpu.product": "NVIDIA-B200"}))
    done = eventually(lambda: batch.read_namespaced_job("on-l4", ns).status.succeeded, what="Job")
    assert done == 1
    pods = core.list_namespaced_pod(ns, label_selector="job-name=on-l4").items
    assert {p.spec.node_name for p in pods} == {"kwok-l4-0"}
    stuck = core.list_namespaced_pod(ns, label_selector="job-name=nowhere").items
    assert [p.status.phase for p in stuck] == ["Pending"]
    assert any(c.reason == "Unschedulable" for c in stuck[0].status.conditions or [])


def test_deleting_an_owner_collects_its_children(cluster: ClusterInfo) -> None:
    ns = namespace(cluster)
    core = client.CoreV1Api(cluster.api_client())
    owner = core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    child = {
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner.metadata.uid,
                }
            ],
        }
    }
    core.create_namespaced_config_map(ns, child)
    core.delete_namespaced_config_map("owner", ns)
    eventually(
        lambda: not core.list_namespaced_config_map(ns, field_selector="metadata.name=child").items,
        what="garbage collection of the child",
    )


def _compact_etcd(info: ClusterInfo) -> None:
    """Compact etcd to its current revision, as the API server does every few minutes."""

    def post(path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            f"{info.etcd}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    revision = post("/v3/kv/range", {"key": base64.b64encode(b"compact").decode()})["header"][
        "revision"
    ]
    post("/v3/kv/compaction", {"revision": revision, "physical": True})


def test_watch_survives_a_forced_expiry(cluster: ClusterInfo) -> None:
    ns = namespace(cluster)
    core = client.CoreV1Api(cluster.api_client())
    old = core.list_namespaced_config_map(ns).metadata.resource_version
    for i in range(3):
        core.create_namespaced_config_map(ns, {"metadata": {"name": f"before-{i}"}})
    _compact_etcd(cluster)
    expired = False
    try:
        for event in watch.Watch().stream(
            core.list_namespaced_config_map, ns, resource_version=old, timeout_seconds=5
        ):
            if event["type"] == "ERROR" and event["raw_object"].get("code") == 410:
                expired = True
                break
    except ApiException as exc:
        expired = exc.status == 410
    assert expired, "a watch from a compacted resourceVersion must expire with 410 Gone"
    # Recover as a controller does: re-list, then watch from the list's resourceVersion.
    listed = core.list_namespaced_config_map(ns)
    assert len(listed.items) == 4  # kube-root-ca.crt and the three
    core.create_namespaced_config_map(ns, {"metadata": {"name": "after-expiry"}})
    seen = []
    for event in watch.Watch().stream(
        core.list_namespaced_config_map,
        ns,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=10,
    ):
        if event["type"] == "ADDED" and event["object"].metadata.name == "after-expiry":
            seen.append(event["object"].metadata.name)
            break
    assert seen == ["after-expiry"]


@pytest.mark.parametrize(("code", "phase"), [(0, "Succeeded"), (3, "Failed")])
def test_executor_runs_builder_pods_for_real(cluster: ClusterInfo, code: int, phase: str) -> None:
    ns = namespace(cluster)
    core = client.CoreV1Api(cluster.api_client())
    batch = client.BatchV1Api(cluster.api_client())
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "req"}, "data": {"request.json": "hello"}}
    )
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "creds"}, "stringData": {"TOKEN": "s3cret"}}
    )
    # Paths travel as arguments, as the builder's do: the executor maps mount paths there.
    script = (
        "import os,sys; data=open(sys.argv[1]).read(); "
        "open(sys.argv[2],'w').write(data + ':' + os.environ['TOKEN']); "
        f"sys.exit({code})"
    )
    spec = job(
        "builder",
        {"nvidia.com/gpu.product": "NVIDIA-A10G"},
        {"kiln.dev/component": "builder"},
        command=["python3", "-c", script, "/etc/req/request.json", "/dev/termination-log"],
        envFrom=[{"secretRef": {"name": "creds"}}],
        volumeMounts=[{"name": "req", "mountPath": "/etc/req"}],
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    spec["spec"]["template"]["spec"]["volumes"] = [{"name": "req", "configMap": {"name": "req"}}]
    batch.create_namespaced_job(ns, spec)

    def finished() -> Any:
        pods = core.list_namespaced_pod(ns, label_selector="job-name=builder").items
        return pods and pods[0].status.phase in ("Succeeded", "Failed") and pods[0]

    pod = eventually(finished, timeout=90, what="the executor to finish the pod")
    assert pod.status.phase == phase
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == code
    assert terminated.message == "hello:s3cret"
    status = eventually(
        lambda: (
            (s := batch.read_namespaced_job("builder", ns).status)
            and (s.succeeded or s.failed)
            and s
        ),
        what="the Job to finish",
    )
    assert (status.succeeded or 0, status.failed or 0) == ((1, 0) if code == 0 else (0, 1))


def test_manifests_apply_server_side_and_grant_least_privilege(cluster: ClusterInfo) -> None:
    """manifests/ as a user applies it (dry run, then for real), then the API server's own RBAC
    evaluator asked what the operator's ServiceAccount may do."""
    documents = install(cluster)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {
        ("Namespace", "kiln-system"),
        ("CustomResourceDefinition", "optimizedmodels.kiln.dev"),
        ("ClusterRole", "kiln-operator"),
        ("Deployment", "kiln-operator"),
    } <= kinds
    apps = client.AppsV1Api(cluster.api_client())
    deploy = apps.read_namespaced_deployment("kiln-operator", "kiln-system")
    assert deploy.spec.template.spec.service_account_name == "kiln-operator"
    install(cluster)  # applying again changes nothing and fails nothing

    sa = "system:serviceaccount:kiln-system:kiln-operator"

    def can(verb: str, resource: str, ns: str = "models") -> bool:
        kind, _, sub = resource.partition("/")
        extra = [f"--subresource={sub}"] if sub else []
        out = subprocess.run(
            [*cluster.kubectl(), "auth", "can-i", verb, kind, *extra, "-n", ns, f"--as={sa}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() == "yes"

    for verb, resource in [
        ("create", "jobs.batch"),
        ("patch", "deployments.apps"),
        ("patch", "deployments.apps/scale"),
        ("create", "configmaps"),
        ("watch", "services"),  # the cache that tells which Services need a write
        ("patch", "optimizedmodels.kiln.dev/status"),
        ("watch", "nodes"),
        ("create", "events"),
    ]:
        assert can(verb, resource), f"the operator needs {verb} {resource}"
    for verb, resource in [
        ("get", "secrets"),  # credentials reach pods by reference only
        ("delete", "jobs.batch"),  # children go through ownerReferences
        ("create", "pods"),
        ("update", "optimizedmodels.kiln.dev"),  # users own the spec
        ("update", "optimizedmodels.kiln.dev/status"),  # status is merge-patched only
        ("delete", "nodes"),
    ]:
        assert not can(verb, resource), f"the operator must not {verb} {resource}"
