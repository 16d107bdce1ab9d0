"""The operator end to end on the local cluster: real API server, real Jobs and scheduling onto
simulated GPU nodes, real builder runs (through the executor), real S3 storage. The operator
runs as a local process under the ServiceAccount and RBAC from manifests/, not as admin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client

from tests.cluster.cluster import ClusterInfo
from tests.conftest import FAST_BENCHMARK, write_calibration

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).parents[2]
KILN = str(Path(sys.executable).parent / "kiln")
NS = "models"


@dataclass
class Operator:
    """The operator process under test; every wait checks that it is still alive."""

    cluster: ClusterInfo
    process: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"the operator exited ({self.process.returncode}):\n{tail}")


def eventually(check: Callable[[], Any], timeout: float, what: str, op: Operator) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        op.check_alive()
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def kubectl(info: ClusterInfo, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(
        [*info.kubectl(), *args], input=stdin, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def service_account_kubeconfig(info: ClusterInfo, folder: Path) -> Path:
    """A kubeconfig for the operator's ServiceAccount, so the test runs it with exactly the
    permissions manifests/ grants."""
    token = kubectl(
        info, "create", "token", "kiln-operator", "-n", "kiln-system", "--duration=2h"
    ).strip()
    admin = yaml.safe_load(info.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "sa",
        "clusters": admin["clusters"],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}
        ],
    }
    path = folder / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def upload_model(info: ClusterInfo, folder: Path) -> None:
    import torch

    from tests.fixtures.tiny_models import build

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        build().eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(folder / "tiny.pt2"))
    write_calibration(folder / "calibration", 32)
    s3 = boto3.client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=info.s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=info.s3_env["AWS_DEFAULT_REGION"],
    )
    s3.upload_file(str(folder / "tiny.pt2"), info.bucket, "models/tiny/tiny.pt2")
    for shard in sorted((folder / "calibration").glob("*.npz")):
        s3.upload_file(str(shard), info.bucket, f"models/tiny/calibration/{shard.name}")


def resource(min_speedup: float = 0.01) -> dict[str, Any]:
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "tiny", "namespace": NS},
        "spec": {
            "source": {"uri": "s3://kiln/models/tiny/tiny.pt2"},
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
            "selection": {"minSpeedup": min_speedup},
            "artifacts": {"uri": "s3://kiln/artifacts", "credentialsSecret": "kiln-s3"},
        },
    }


@pytest.fixture(scope="module")
def operator(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    folder = tmp_path_factory.mktemp("e2e")
    rendered = kubectl(cluster, "kustomize", str(REPO / "manifests"))
    # A server-side dry run cannot create the namespace its other objects live in: apply the
    # Namespace first, then dry-run everything, then apply for real.
    namespaces = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Namespace"]
    kubectl(cluster, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(namespaces))
    kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=rendered)
    kubectl(cluster, "apply", "--server-side", "-f", "-", stdin=rendered)
    kubectl(
        cluster,
        "wait",
        "--for=condition=Established",
        "crd/optimizedmodels.kiln.dev",
        "--timeout=60s",
    )
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_secret(
        NS, {"metadata": {"name": "kiln-s3"}, "stringData": cluster.s3_env}
    )
    upload_model(cluster, folder)
    log = (folder / "operator.log").open("wb")
    env = {**os.environ, **cluster.s3_env, "PYTHONUNBUFFERED": "1"}
    env.pop("KUBECONFIG", None)
    process = subprocess.Popen(
        [
            KILN,
            "operator",
            "--kubeconfig",
            str(service_account_kubeconfig(cluster, folder)),
            "--builder-image",
            "kiln-builder:test",
            "--liveness",
            "http://127.0.0.1:0/healthz",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        yield Operator(cluster, process, folder / "operator.log")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        print((folder / "operator.log").read_text()[-5000:])


def status_of(info: ClusterInfo) -> dict[str, Any]:
    custom = client.CustomObjectsApi(info.api_client())
    obj = custom.get_namespaced_custom_object("kiln.dev", "v1alpha1", NS, "optimizedmodels", "tiny")
    status: dict[str, Any] = obj.get("status") or {}
    return status


def test_apply_to_ready_then_reselect_then_delete(operator: Operator) -> None:
    info = operator.cluster
    kubectl(info, "apply", "-f", "-", stdin=json.dumps(resource()))
    status = eventually(
        lambda: (s := status_of(info)).get("phase") == "Ready" and s, 600, "phase Ready", operator
    )

    conditions = {c["type"]: c for c in status["conditions"]}
    for kind in ("Accepted", "Exported", "Built", "Benchmarked", "Ready"):
        assert conditions[kind]["status"] == "True", conditions[kind]
    targets = {t["name"]: t for t in status["targets"]}
    assert set(targets) == {"cpu", "NVIDIA-H100-80GB-HBM3", "NVIDIA-A10G", "NVIDIA-L4"}
    cpu = targets["cpu"]
    assert cpu["selected"].startswith("onnxruntime-cpu")
    assert cpu["deployment"] == "tiny-cpu"
    assert cpu["readyReplicas"] == 1
    for name in ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A10G", "NVIDIA-L4"):
        assert targets[name]["state"] == "SKIPPED"  # the GPU is simulated; nothing is faked
        assert "CUDA" in targets[name]["reason"]
    assert status["readyTargets"] == "1/4"

    apps = client.AppsV1Api(info.api_client())
    deploy = apps.read_namespaced_deployment("tiny-cpu", NS)
    assert deploy.spec.template.metadata.annotations["kiln.dev/engine-key"] == cpu["cacheKey"]
    table = kubectl(info, "get", "optimizedmodels", "-n", NS)
    assert table.split("\n")[0].split() == [
        "NAME",
        "PHASE",
        "TARGETS",
        "BEST",
        "SPEEDUP",
        "READY",
        "AGE",
    ]
    assert "Ready" in table
    assert "1/4" in table

    batch = client.BatchV1Api(info.api_client())
    jobs_before = {j.metadata.name for j in batch.list_namespaced_job(NS).items}
    assert len(jobs_before) == 5  # one export + one per target
    # A selection change re-decides from stored measurements: no new Job, and the serving
    # engine stays because nothing better was selected.
    kubectl(info, "apply", "-f", "-", stdin=json.dumps(resource(min_speedup=1000)))
    eventually(
        lambda: status_of(info).get("phase") == "NoImprovement", 120, "NoImprovement", operator
    )
    assert {j.metadata.name for j in batch.list_namespaced_job(NS).items} == jobs_before
    assert apps.read_namespaced_deployment("tiny-cpu", NS).spec.replicas == 1

    events = (
        client.CoreV1Api(info.api_client())
        .list_namespaced_event(NS, field_selector="involvedObject.name=tiny")
        .items
    )
    assert any(e.reason == "Serving" for e in events)

    kubectl(info, "delete", "optimizedmodel", "tiny", "-n", NS, "--wait=true", "--timeout=60s")
    eventually(
        lambda: (
            not apps.list_namespaced_deployment(NS).items
            and not batch.list_namespaced_job(NS).items
        ),
        120,
        "garbage collection of children",
        operator,
    )
