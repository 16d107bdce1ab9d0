"""The operator end to end on the local cluster: real API server, real Jobs and scheduling onto
simulated GPU nodes, real builder runs (through the executor), real S3 storage.

The operator is installed and started from the rendered manifests/ (tests.cluster.install):
the Deployment's command, its ConfigMap and Secret environment, and the ServiceAccount's token,
so it runs with exactly the RBAC that manifests/ grants, never as admin. Only the image is
replaced by a local process.
Each test has a namespace of its own; stored results are shared through S3, as in a cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from kubernetes import client

from kiln.api.phase import IN_FLIGHT
from tests.cluster.binaries import ComponentError
from tests.cluster.cluster import ClusterInfo
from tests.cluster.executor import launch
from tests.cluster.install import (
    OPERATOR_NAMESPACE,
    install,
    kubectl,
    operator_command,
    s3_secret,
)
from tests.cluster.metrics import delta, request_counts, writes_to
from tests.cluster.models import upload_tiny
from tests.cluster.processes import free_port
from tests.conftest import FAST_BENCHMARK
from tests.fixtures.tiny_models import build

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).parents[2]
GROUP, VERSION, PLURAL = "kiln.dev", "v1alpha1", "optimizedmodels"
GPU_TYPES = {"NVIDIA-H100-80GB-HBM3", "NVIDIA-A10G", "NVIDIA-L4"}
MODEL = "s3://kiln/models/tiny/tiny.pt2"


@dataclass
class Operator:
    """The operator process, launched from the rendered Deployment; every wait checks that it
    is still alive, so a crash fails the test at once with the log's tail."""

    cluster: ClusterInfo
    argv: list[str]
    env: dict[str, str]
    log: Path
    liveness: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"--- start {self.starts} ---\n".encode())
            out.flush()
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.starts += 1

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the operator exited ({self.process.returncode}):\n{tail}")

    def api(self) -> Any:
        return self.cluster.api_client()


def eventually(op: Operator, check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        op.check_alive()
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def status_of(op: Operator, ns: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(op.api())
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    status: dict[str, Any] = obj.get("status") or {}
    return status


def describe(status: dict[str, Any]) -> str:
    """The parts of a status worth reading when a wait times out."""
    conds = [
        f"{c['type']}={c['status']} {c['reason']}: {c['message']}"
        for c in status.get("conditions", [])
    ]
    targets = [f"{t['name']}={t['state']} ({t.get('reason')})" for t in status.get("targets", [])]
    return f"phase={status.get('phase')} gen={status.get('observedGeneration')}\n  " + "\n  ".join(
        conds + targets
    )


def wait_status(
    op: Operator,
    ns: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 300,
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        seen.update(status=status_of(op, ns, name))
        return seen["status"] if predicate(seen["status"]) else None

    try:
        found: dict[str, Any] = eventually(op, check, timeout, f"{ns}/{name}: {what}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status:\n  {describe(seen.get('status', {}))}") from None
    return found


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions", [])}


def ready(generation: int = 1) -> Callable[[dict[str, Any]], bool]:
    """Phase Ready at `generation`, with every target settled. A resource is Ready as soon as
    one target serves while the others may still build (kiln.api.phase), and the tests read
    every target's outcome: on an idle machine the targets end close together, on a busy one
    minutes apart, so the wait is for the state, not for the first sign of it."""

    def settled(status: dict[str, Any]) -> bool:
        targets = status.get("targets", [])
        return (
            status.get("phase") == "Ready"
            and status.get("observedGeneration") == generation
            and not any(t.get("phase") in IN_FLIGHT or t["state"] == "PENDING" for t in targets)
        )

    return settled


def resource(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "source": {"uri": MODEL},
        "inputs": [{"name": "image", "shape": [-1, 3, 16, 16]}],
        "outputs": ["logits"],
        "batchSizes": [1, 4],
        "backends": ["pytorch", "onnxruntime", "tensorrt"],
        "precisions": ["fp32", "int8"],
        "calibration": {
            "uri": "s3://kiln/models/tiny/calibration",
            "samples": 16,
            "method": "minmax",
        },
        "accuracy": {"samples": 4, "int8MaxDegradation": 0.2},
        "benchmark": FAST_BENCHMARK,
        "selection": {"minSpeedup": 0.01},
        "artifacts": {"uri": "s3://kiln/artifacts", "credentialsSecret": "kiln-s3"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OptimizedModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


def apply(op: Operator, *documents: dict[str, Any]) -> None:
    """`kubectl apply` of the documents, in one request (a List)."""
    body = {"apiVersion": "v1", "kind": "List", "items": list(documents)}
    kubectl(op.cluster, "apply", "-f", "-", stdin=json.dumps(body))


def namespace(op: Operator, prefix: str) -> str:
    """A namespace of the test's own, with the S3 credentials Secret builders reference."""
    return create_namespace(op.cluster, prefix)


def create_namespace(cluster: ClusterInfo, prefix: str) -> str:
    """`namespace`, before any operator runs (for one that watches only it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(cluster.api_client()).create_namespace({"metadata": {"name": name}})
    s3_secret(cluster, name)
    return name


def ready_from_storage(op: Operator, ns: str, name: str) -> dict[str, Any]:
    """Apply the spec a resource built before and see it Ready without a single Job."""
    apply(op, resource(name, ns))
    status = wait_status(op, ns, name, ready(), "phase Ready")
    assert job_names(op, ns) == set()
    return status


def job_names(op: Operator, ns: str) -> set[str]:
    return {j.metadata.name for j in client.BatchV1Api(op.api()).list_namespaced_job(ns).items}


def delete_and_wait_for_collection(op: Operator, ns: str, *names: str) -> None:
    """Delete the resources; their Jobs and Deployments go through ownerReferences."""
    kubectl(op.cluster, "delete", PLURAL, *names, "-n", ns, "--wait=true", "--timeout=60s")
    apps, batch = client.AppsV1Api(op.api()), client.BatchV1Api(op.api())
    eventually(
        op,
        lambda: (
            not apps.list_namespaced_deployment(ns).items
            and not batch.list_namespaced_job(ns).items
        ),
        120,
        "garbage collection of the children",
    )


@contextlib.contextmanager
def running_operator(cluster: ClusterInfo, folder: Path, *extra: str) -> Iterator[Operator]:
    """manifests/ installed and the operator started from its Deployment, with `extra` flags;
    stopped afterwards, its log's tail printed."""
    documents = install(cluster)
    s3_secret(cluster, OPERATOR_NAMESPACE)
    command = operator_command(cluster, documents, folder, "--resync-seconds", "30", *extra)
    op = Operator(cluster, command.argv, command.env, folder / "operator.log", command.liveness)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        print(op.log.read_text(errors="replace")[-5000:])


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    folder = tmp_path_factory.mktemp("e2e")
    upload_tiny(cluster, folder)
    with running_operator(cluster, folder) as op:
        yield op


@contextlib.contextmanager
def serve_like_the_deployment(
    op: Operator, ns: str, name: str, folder: Path
) -> Iterator[tuple[str, str]]:
    """Run the container of the Deployment the operator rendered, as a kubelet would (its
    command, and its environment from the referenced Secret), on a free local port; yield the
    base URL and the engine key it was told to serve. The cluster's own server pods are made
    Running by kwok, so this is where `kiln serve` runs for real."""
    deploy = client.AppsV1Api(op.api()).read_namespaced_deployment(name, ns)
    template = op.api().sanitize_for_serialization(deploy.spec.template)
    pod = {"metadata": template["metadata"], "spec": template["spec"]}
    started = launch(pod, folder, {}, {"kiln-s3": op.cluster.s3_env}, Path(sys.executable).parent)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env = {**base, **started.env, "XDG_CACHE_HOME": str(folder / "cache")}
    # The pod listens on 0.0.0.0:8080; here, loopback and a free port (the last flag wins).
    argv = [*started.argv, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--grpc-port", str(free_port())]
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (folder / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.3)
        yield url, template["metadata"]["annotations"]["kiln.dev/engine-key"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def check_answer(url: str, model: str, precision: str) -> None:
    """An inference through the server matches the uploaded model within the gate the served
    candidate passed: element-wise for FP32, relative L2 for INT8."""
    image = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    request = {
        "inputs": [
            {
                "name": "image",
                "shape": [3, 3, 16, 16],
                "datatype": "FP32",
                "data": image.ravel().tolist(),
            }
        ]
    }
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=request, timeout=30)
    assert answer.status_code == 200, answer.text
    (output,) = answer.json()["outputs"]
    got = np.asarray(output["data"], np.float32).reshape(output["shape"])
    with torch.no_grad():
        expected = build().eval()(torch.from_numpy(image)).numpy()  # the uploaded model
    if precision == "int8":
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert error <= 0.2, f"relative L2 error {error:.3f} over int8MaxDegradation"
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_apply_to_ready_then_reselect_then_delete(operator: Operator, tmp_path: Path) -> None:
    op = operator
    ns = namespace(op, "ready")
    apply(op, resource("tiny", ns))
    status = wait_status(op, ns, "tiny", ready(), "phase Ready", timeout=600)

    conds = conditions(status)
    for kind in ("Accepted", "Exported", "Built", "Benchmarked", "Ready"):
        assert conds[kind]["status"] == "True", conds[kind]
        assert conds[kind]["observedGeneration"] == 1
    assert conds["Degraded"]["status"] == "False"
    targets = {t["name"]: t for t in status["targets"]}
    assert set(targets) == {"cpu", *GPU_TYPES}
    cpu = targets["cpu"]
    assert cpu["selected"].startswith("onnxruntime-cpu")
    assert cpu["deployment"] == "tiny-cpu"
    assert cpu["readyReplicas"] == 1
    assert cpu["endpoint"] == f"http://tiny-cpu.{ns}.svc:8080/v2/models/tiny"
    selected = next(c for c in cpu["candidates"] if c["name"] == cpu["selected"])
    assert selected["accuracy"]["passed"] is True
    assert selected["speedup"] > 0
    for name in GPU_TYPES:
        assert targets[name]["state"] == "SKIPPED"  # the GPU is simulated; nothing is faked
        assert "CUDA" in targets[name]["reason"]
    assert status["readyTargets"] == "1/1 (3 skipped)"
    assert status["best"] == f"{cpu['selected']}@cpu"

    apps = client.AppsV1Api(op.api())
    deploy = apps.read_namespaced_deployment("tiny-cpu", ns)
    assert deploy.spec.template.metadata.annotations["kiln.dev/engine-key"] == cpu["cacheKey"]
    assert deploy.metadata.owner_references[0].kind == "OptimizedModel"
    args = deploy.spec.template.spec.containers[0].args
    assert args[args.index("--cache-key") + 1] == cpu["cacheKey"]
    table = kubectl(op.cluster, "get", PLURAL, "-n", ns)
    header, row = table.splitlines()[:2]
    assert header.split() == [
        "NAME",
        "PHASE",
        "TARGETS",
        "BEST",
        "SPEEDUP",
        "SAVINGS",
        "READY",
        "AGE",
    ]
    # Read by the header's columns: a value may hold spaces ("1/1 (3 skipped)").
    starts = [header.index(word) for word in header.split()]
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    assert cells[:4] == ["tiny", "Ready", "1/1 (3 skipped)", status["best"]]
    # GitOps: the operator adds its finalizer and writes status, nothing else on the object.
    obj = client.CustomObjectsApi(op.api()).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "tiny"
    )
    assert obj["metadata"]["finalizers"] == ["kiln.dev/finalizer"]
    # (kubectl's own client-side apply record is the only annotation: none of Kopf's or ours)
    assert set(obj["metadata"].get("annotations", {})) <= {
        "kubectl.kubernetes.io/last-applied-configuration"
    }

    # What the Deployment runs serves the selected engine, with the Secret's credentials.
    service = client.CoreV1Api(op.api()).read_namespaced_service("tiny-cpu", ns)
    ports = {p.name: (p.port, p.target_port, p.app_protocol) for p in service.spec.ports}
    assert ports == {"http": (8080, "http", None), "grpc": (8081, "grpc", "grpc")}
    with serve_like_the_deployment(op, ns, "tiny-cpu", tmp_path) as (url, engine):
        assert engine == cpu["cacheKey"]
        meta = httpx.get(f"{url}/v2/models/tiny", timeout=5).json()
        assert meta["versions"] == [cpu["cacheKey"]]
        assert meta["platform"] == cpu["selected"]
        check_answer(url, "tiny", selected["precision"])

    jobs_before = job_names(op, ns)
    assert len(jobs_before) == 5  # one export + one per target
    # A selection change re-decides from stored measurements: no new Job, and the serving
    # engine stays because nothing better was selected.
    apply(op, resource("tiny", ns, selection={"minSpeedup": 1000}))
    status = wait_status(
        op, ns, "tiny", lambda s: s.get("observedGeneration") == 2, "generation 2 observed"
    )
    assert status["phase"] == "NoImprovement"
    assert "no candidate reached minSpeedup 1000x" in status["summary"]
    assert job_names(op, ns) == jobs_before
    assert apps.read_namespaced_deployment("tiny-cpu", ns).spec.replicas == 1

    # Capacity and money re-decide from stored measurements too; with replicas: auto the
    # Deployment runs what the selected engine needs for the throughput asked.
    wanted = selected["throughput"] * 2.5  # 4 replicas planned at 80 % utilization
    money = {"replicas": "auto", "targetThroughput": wanted}
    apply(op, resource("tiny", ns, serving=money, cost={"hourly": {"cpu": 0.25}}))
    status = wait_status(op, ns, "tiny", ready(3), "generation 3 Ready")
    plan = next(t for t in status["targets"] if t["name"] == "cpu")["capacity"]
    assert plan["selectedReplicas"] == 4
    assert plan["selectedMonthlyCost"] == pytest.approx(4 * 0.25 * 730)
    assert status["cheapestTarget"] == "cpu"
    assert job_names(op, ns) == jobs_before
    assert apps.read_namespaced_deployment("tiny-cpu", ns).spec.replicas == 4
    row = kubectl(op.cluster, "get", PLURAL, "-n", ns).splitlines()[1]
    # (SPEEDUP may read "1.23x (disturbed)" when the cluster sharing the cores was busy)
    assert f" {status['savings']} " in row

    events = client.CoreV1Api(op.api()).list_namespaced_event(
        ns, field_selector="involvedObject.name=tiny"
    )
    reasons = {e.reason for e in events.items}
    assert {"Accepted", "Exported", "Built", "Serving"} <= reasons, reasons

    with urllib.request.urlopen(op.liveness, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read())["reconcileLoops"] >= 1

    delete_and_wait_for_collection(op, ns, "tiny")


def test_an_aotinductor_engine_is_built_selected_and_served(
    operator: Operator, tmp_path: Path
) -> None:
    """A package compiled by the target's build Job, chosen, and loaded by the Deployment's
    server from object storage."""
    op = operator
    ns = namespace(op, "aoti")
    backends = ["pytorch", "aotinductor"]
    apply(op, resource("compiled", ns, backends=backends, precisions=["fp32"]))
    status = wait_status(op, ns, "compiled", ready(), "phase Ready", timeout=600)
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    assert cpu["selected"] == "aotinductor-cpu-fp32"
    chosen = next(c for c in cpu["candidates"] if c["name"] == cpu["selected"])
    assert chosen["artifact"].startswith("s3://kiln/artifacts/aoti-")
    assert chosen["accuracy"]["passed"] is True
    with serve_like_the_deployment(op, ns, "compiled-cpu", tmp_path) as (url, engine):
        assert engine == cpu["cacheKey"]
        assert httpx.get(f"{url}/v2/models/compiled", timeout=5).json()["platform"] == (
            "aotinductor-cpu-fp32"
        )
        check_answer(url, "compiled", "fp32")
    delete_and_wait_for_collection(op, ns, "compiled")


def test_stored_results_mean_no_job_at_all(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "stored")
    status = ready_from_storage(op, ns, "again")
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    assert cpu["readyReplicas"] == 1
    delete_and_wait_for_collection(op, ns, "again")


def test_settled_passes_write_nothing_and_hand_edits_are_undone(operator: Operator) -> None:
    """Idle passes are free (kiln.operator.drift), counted by the API server itself: a spec
    change that re-decides the same engine and a resync (30 s here) write the status and no
    child; a hand edit of a field Kiln sets, or a deleted child, is put back."""
    op = operator
    ns = namespace(op, "idle")
    ready_from_storage(op, ns, "idle")
    children = {"deployments", "services", "jobs", "configmaps"}
    before = request_counts(op.cluster)
    apply(op, resource("idle", ns, selection={"minSpeedup": 0.02}))
    wait_status(op, ns, "idle", ready(2), "phase Ready at generation 2")
    time.sleep(40)  # past the resync of every settled resource (30 s, jittered by 20 %)
    sent = delta(before, request_counts(op.cluster))
    assert writes_to(sent, children) == 0, sent
    assert sent[("PATCH", "optimizedmodels", "status")] >= 1  # the status did change

    apps, core = client.AppsV1Api(op.api()), client.CoreV1Api(op.api())
    kubectl(op.cluster, "scale", "deployment/idle-cpu", "--replicas=3", "-n", ns)
    eventually(
        op,
        lambda: apps.read_namespaced_deployment("idle-cpu", ns).spec.replicas == 1,
        60,
        "the hand-scaled Deployment back at the replicas the spec asks for",
    )
    core.delete_namespaced_service("idle-cpu", ns)
    eventually(
        op,
        lambda: any(s.metadata.name == "idle-cpu" for s in core.list_namespaced_service(ns).items),
        60,
        "the hand-deleted Service applied again",
    )
    delete_and_wait_for_collection(op, ns, "idle")


def test_a_new_gpu_type_is_built_for_and_a_vanished_one_goes_stale(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "nodes")
    ready_from_storage(op, ns, "fleet")

    (node,) = op.cluster.add_nodes(
        [
            {
                "name": "t4",
                "labels": {"nvidia.com/gpu.product": "Tesla-T4", "nvidia.com/gpu.count": 1},
                "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110", "nvidia.com/gpu": "1"},
            }
        ]
    )
    status = wait_status(
        op,
        ns,
        "fleet",
        lambda s: any(t["name"] == "Tesla-T4" and t["state"] == "SKIPPED" for t in s["targets"]),
        "a built target for the new GPU type",
    )
    (job,) = job_names(op, ns)  # exactly one build, for the new type; the export is reused
    assert job.startswith("fleet-build-tesla-t4-")
    pod = client.BatchV1Api(op.api()).read_namespaced_job(job, ns).spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert status["readyTargets"] == "1/1 (4 skipped)"

    client.CoreV1Api(op.api()).delete_node(node)
    status = wait_status(
        op,
        ns,
        "fleet",
        lambda s: any(t["name"] == "Tesla-T4" and t.get("stale") for t in s["targets"]),
        "the vanished GPU type's target marked stale",
    )
    degraded = conditions(status)["Degraded"]
    assert degraded["status"] == "True"
    assert "target Tesla-T4: no node of this GPU type is left" in degraded["message"]
    assert status["phase"] == "Ready"  # the CPU target keeps serving
    delete_and_wait_for_collection(op, ns, "fleet")


def test_a_spec_change_rebuilds_only_what_it_changes(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "change")
    ready_from_storage(op, ns, "tuned")

    # A gate's tolerance is part of each target's measurement, not of the export. (Not the
    # sample count: by default that many calibration samples are held out of quantization.)
    gate = {"samples": 4, "int8MaxDegradation": 0.2, "atol": 2e-4}
    apply(op, resource("tuned", ns, accuracy=gate))
    status = wait_status(op, ns, "tuned", ready(2), "phase Ready at generation 2", timeout=600)
    batch = client.BatchV1Api(op.api())
    stages = {j.metadata.labels["kiln.dev/stage"] for j in batch.list_namespaced_job(ns).items}
    assert stages == {"target"}  # four target Jobs, no export Job
    assert len(job_names(op, ns)) == 4
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    ort = next(c for c in cpu["candidates"] if c["name"] == "onnxruntime-cpu-fp32")
    assert ort["artifactReused"] is True  # the engine was reused, only its measurement is new
    assert ort["cached"] is False
    assert "|y-ref| <= 0.0002 + " in ort["accuracy"]["criterion"]
    delete_and_wait_for_collection(op, ns, "tuned")


def test_an_operator_restart_mid_build_resumes_without_duplicates(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "restart")
    slow = {**FAST_BENCHMARK, "warmupIterations": 3}  # new measurement keys: real builds
    apply(op, resource("resumed", ns, benchmark=slow))
    eventually(op, lambda: job_names(op, ns), 120, "the first builder Job")
    op.stop(kill=True)  # no graceful shutdown: as if the node went away
    op.start()
    status = wait_status(op, ns, "resumed", ready(), "phase Ready after the restart", timeout=600)
    batch = client.BatchV1Api(op.api())
    jobs = batch.list_namespaced_job(ns).items
    assert len(jobs) == 4  # one per target; the export is reused
    # Results reach storage just before their Jobs are recorded as complete.
    eventually(
        op,
        lambda: all(j.status.succeeded == 1 for j in batch.list_namespaced_job(ns).items),
        60,
        "every Job to succeed",
    )
    assert not any(j.status.failed for j in batch.list_namespaced_job(ns).items)
    pods = client.CoreV1Api(op.api()).list_namespaced_pod(
        ns, label_selector="kiln.dev/component=builder"
    )
    assert len(pods.items) == 4  # no Job ran twice
    assert conditions(status)["Built"]["status"] == "True"
    delete_and_wait_for_collection(op, ns, "resumed")


def test_a_failing_export_job_ends_in_failed_with_its_reason(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "broken")
    apply(op, resource("broken", ns, source={"uri": "s3://kiln/models/broken/broken.pt2"}))
    status = wait_status(op, ns, "broken", lambda s: s.get("phase") == "Failed", "phase Failed")
    exported = conditions(status)["Exported"]
    assert (exported["status"], exported["reason"]) == ("False", "ExportFailed")
    assert exported["message"].startswith("exit 2: ")  # the builder's termination message
    assert "broken.pt2" in exported["message"]
    assert conditions(status)["Degraded"]["status"] == "True"
    # Bad input fails the Job at once: one pod, no retries that cannot help.
    pods = client.CoreV1Api(op.api()).list_namespaced_pod(
        ns, label_selector="kiln.dev/stage=export"
    )
    assert len(pods.items) == 1
    assert not client.AppsV1Api(op.api()).list_namespaced_deployment(ns).items
    events = client.CoreV1Api(op.api()).list_namespaced_event(ns)
    assert any(e.type == "Warning" and e.reason == "ExportFailed" for e in events.items)
    delete_and_wait_for_collection(op, ns, "broken")


PLANTED = "kilnPLANTEDfakeSecret0123456789abcdef"


def test_a_planted_credential_appears_in_no_log_event_status_or_message(
    operator: Operator,
) -> None:
    """The credentials Secret reaches builder pods by reference only: a recognisable fake key
    (the local S3 server takes any) shows up in no Event, status, termination message, pod or
    Job, and in no file the operator, the executor or the builders wrote."""
    op = operator
    ns = f"planted-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(op.api()).create_namespace({"metadata": {"name": ns}})
    planted = {**op.cluster.s3_env, "AWS_SECRET_ACCESS_KEY": PLANTED}
    secret = {"metadata": {"name": "kiln-s3", "namespace": ns}, "stringData": planted}
    client.CoreV1Api(op.api()).create_namespaced_secret(ns, secret)
    apply(op, resource("broken", ns, source={"uri": "s3://kiln/models/broken/broken.pt2"}))
    wait_status(op, ns, "broken", lambda s: s.get("phase") == "Failed", "phase Failed")
    texts = [
        kubectl(op.cluster, "get", kind, "-n", ns, "-o", "json")
        for kind in ("events", PLURAL, "pods", "jobs", "configmaps", "deployments")
    ]
    assert "exit 2: " in texts[1]  # the builder did run with the planted key and reported
    assert not [
        kind for kind, text in zip(("events", PLURAL), texts, strict=False) if PLANTED in text
    ]
    assert not [text[:80] for text in texts if PLANTED in text]
    leaked = [
        str(path)
        for folder in (op.cluster.root, op.log.parent)
        for path in Path(folder).rglob("*")
        if path.is_file() and "etcd" not in path.parts and _holds(path, PLANTED.encode())
    ]
    assert leaked == []  # etcd keeps the Secret itself, which is where it belongs
    delete_and_wait_for_collection(op, ns, "broken")


def _holds(path: Path, needle: bytes) -> bool:
    try:
        return path.stat().st_size < 200 << 20 and needle in path.read_bytes()
    except OSError:
        return False


def test_bad_specs_end_in_the_right_conditions(operator: Operator) -> None:
    op = operator
    ns = namespace(op, "invalid")
    # What the CRD schema catches never reaches the operator: kubectl shows the server's words.
    bad_shape = resource("shape", ns, inputs=[{"name": "image", "shape": [-1, -1, 16]}])
    with pytest.raises(ComponentError) as refused:
        kubectl(op.cluster, "apply", "-f", "-", stdin=json.dumps(bad_shape))
    message = str(refused.value)
    assert "spec.inputs[0].dynamic" in message
    assert "every -1 but the batch axis needs a dynamic entry" in message

    # What only Kiln's own rules or the world outside the API server can tell, the status does.
    apply(op, resource("nosource", ns, source={"uri": "s3://kiln/models/nope.pt2"}))
    apply(op, resource("batch", ns, selection={"batchSize": 3}))
    apply(op, resource("nogpu", ns, targets={"cpu": True, "gpuTypes": ["NVIDIA-B200"]}))

    status = wait_status(op, ns, "nosource", lambda s: s.get("phase") == "Failed", "Failed")
    accepted = conditions(status)["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidInput")
    assert accepted["message"].startswith("spec.source.uri (s3://kiln/models/nope.pt2): no such")

    status = wait_status(op, ns, "batch", lambda s: s.get("phase") == "Failed", "Failed")
    accepted = conditions(status)["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "InvalidSpec")
    assert accepted["message"] == "spec.selection.batchSize: 3 is not one of batchSizes [1, 4]"

    # A GPU type no node has degrades the resource but does not block the CPU target.
    status = wait_status(op, ns, "nogpu", ready(), "phase Ready")
    degraded = conditions(status)["Degraded"]
    assert degraded["status"] == "True"
    assert (
        "spec.targets.gpuTypes[0]: no node has nvidia.com/gpu.product=NVIDIA-B200"
        in (degraded["message"])
    )
    assert [t["name"] for t in status["targets"]] == ["cpu"]
    assert job_names(op, ns) == set()
    delete_and_wait_for_collection(op, ns, "nosource", "batch", "nogpu")
