"""`make dev-up`: a development cluster with Kiln running on it, from the working tree.

The local cluster (etcd, API server, controller-manager, scheduler, kwok with simulated GPU
nodes, S3 server, builder-pod executor), Kiln installed from manifests/, the operator started
from the rendered Deployment under its ServiceAccount and restarted whenever it exits, as the
kubelet would (tests/cluster/restart.py; recorded with the cluster's processes, so `make
dev-down` stops it too), the example model and calibration set uploaded to the local
S3 server, and `.kiln/examples/lipsync.yaml`, the example resource pointing there:

    kubectl --kubeconfig .kiln/kubeconfig apply -f .kiln/examples/lipsync.yaml
    kubectl --kubeconfig .kiln/kubeconfig get optimizedmodels -w
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import cluster, restart
from tests.cluster.install import OPERATOR_NAMESPACE, install, operator_command, s3_secret
from tests.cluster.processes import Supervisor, http_ok

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "lipsync"
EXAMPLE_PREFIX = "examples/lipsync"
NAMESPACE = "default"


def example_resource(spec: dict[str, Any], bucket: str) -> dict[str, Any]:
    """The bundled example's resource, pointed at the local S3 server (pure)."""
    document = {**spec, "metadata": {**spec["metadata"], "namespace": NAMESPACE}}
    body = dict(spec["spec"])
    body["source"] = {**body["source"], "uri": f"s3://{bucket}/{EXAMPLE_PREFIX}/lipsync.pt2"}
    body["calibration"] = {
        **body["calibration"],
        "uri": f"s3://{bucket}/{EXAMPLE_PREFIX}/calibration",
    }
    body["artifacts"] = {"uri": f"s3://{bucket}/artifacts", "credentialsSecret": "kiln-s3"}
    document["spec"] = body
    return document


def upload_example(info: cluster.ClusterInfo) -> None:
    import boto3

    data = EXAMPLE / "data"
    # Idempotent: existing files are kept, so the model digest and cache keys stay the same.
    subprocess.run([sys.executable, str(EXAMPLE / "make_example.py")], check=True)
    s3 = boto3.client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=info.s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=info.s3_env["AWS_DEFAULT_REGION"],
    )
    s3.upload_file(str(data / "lipsync.pt2"), info.bucket, f"{EXAMPLE_PREFIX}/lipsync.pt2")
    for shard in sorted((data / "calibration").glob("*.npz")):
        s3.upload_file(str(shard), info.bucket, f"{EXAMPLE_PREFIX}/calibration/{shard.name}")


def up(root: Path, out: Path) -> cluster.ClusterInfo:
    info = cluster.up(root)
    supervisor = Supervisor(root / "state.json", resume=True)
    try:
        documents = install(info)
        s3_secret(info, OPERATOR_NAMESPACE)
        s3_secret(info, NAMESPACE)
        upload_example(info)
        command = operator_command(info, documents, root / "operator")
        # Restarted as a kubelet restarts the Deployment's container (a lost Lease exits).
        kept = [sys.executable, restart.__file__, "--", *command.argv]
        log = root / "logs" / "operator.log"
        proc = supervisor.start("operator", kept, log, command.env, False)
        supervisor.wait_ready(proc, lambda: http_ok(command.liveness), 60)
        spec = yaml.safe_load((EXAMPLE / "optimizedmodel.yaml").read_text())
        out.mkdir(parents=True, exist_ok=True)
        example = out / "lipsync.yaml"
        example.write_text(yaml.safe_dump(example_resource(spec, info.bucket), sort_keys=False))
    except BaseException:
        supervisor.stop_all()
        raise
    return info


def main(root: Path, kiln_dir: Path) -> None:
    started = time.monotonic()
    info = up(root, kiln_dir / "examples")
    print(f"dev cluster with the Kiln operator up in {time.monotonic() - started:.1f}s")
    print(f"  operator log: {root / 'logs' / 'operator.log'}")
    print(f"  kubectl: {info.kubectl()[0]}")
    print("  kubectl --kubeconfig .kiln/kubeconfig apply -f .kiln/examples/lipsync.yaml")
    print("  kubectl --kubeconfig .kiln/kubeconfig get optimizedmodels -w")
