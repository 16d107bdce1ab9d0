"""Start and stop the local cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok with simulated GPU nodes, an S3 server and the pod executor. Everything
listens on 127.0.0.1 on free ports; everything started is recorded and stopped."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster import binaries, nodes, pki
from tests.cluster.processes import (
    Supervisor,
    free_port,
    http_ok,
    restart_recorded,
    stop_recorded,
)

HERE = Path(__file__).resolve().parent
STAGES = HERE / "stages" / "stages.yaml"
BUCKET = "kiln"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "kiln-dev",
    "AWS_SECRET_ACCESS_KEY": "kiln-dev-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class ClusterInfo:
    root: Path
    kubeconfig: Path
    server: str
    s3_endpoint: str
    s3_env: dict[str, str]
    bin_dir: Path
    etcd: str
    bucket: str = BUCKET

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self) -> list[str]:
        return [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig)]

    def restart_apiserver(self, pause: float = 0.0, timeout: float = 120) -> float:
        """Stop kube-apiserver, wait `pause` seconds, start it again on the same port and wait
        until it is ready; returns the seconds it was unreachable."""
        certs = pki.Pki.at(self.root / "pki")
        tls = _tls(certs.ca, certs.admin_cert, certs.admin_key)
        started = time.monotonic()
        restart_recorded(
            self.root / "state.json",
            "kube-apiserver",
            lambda: http_ok(f"{self.server}/readyz", tls),
            timeout,
            pause,
        )
        return time.monotonic() - started

    def add_nodes(self, pools: list[dict[str, Any]], scale: int = 1) -> list[str]:
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        names = []
        for manifest in nodes.render(pools, scale):
            core.create_node(manifest)
            names.append(manifest["metadata"]["name"])
        return names


def _tls(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def _insecure() -> ssl.SSLContext:
    # controller-manager and scheduler serve /healthz on self-signed certificates.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def up(root: Path, node_set: Path | None = nodes.DEFAULT_SET, executor: bool = True) -> ClusterInfo:
    """Start everything, or stop what was started and raise ComponentError naming the culprit."""
    root.mkdir(parents=True, exist_ok=True)
    state = root / "state.json"
    stop_recorded(state)  # a previous run that was killed: leave no orphans behind
    logs = root / "logs"
    sup = Supervisor(state)
    try:
        bins = binaries.ensure()
        etcd_bin = bins["etcd"]
        certs = pki.generate(root / "pki")

        etcd_port, peer_port = free_port(), free_port()
        data = root / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        etcd = sup.start(
            "etcd",
            [
                str(etcd_bin),
                "--name",
                "kiln",
                "--data-dir",
                str(data),
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"kiln=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
                "--log-level",
                "warn",
                "--unsafe-no-fsync",
            ],
            logs / "etcd.log",
        )
        sup.wait_ready(etcd, lambda: http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30)

        api_port = free_port()
        server = f"https://127.0.0.1:{api_port}"
        apiserver = sup.start(
            "kube-apiserver",
            [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={certs.server_cert}",
                f"--tls-private-key-file={certs.server_key}",
                f"--client-ca-file={certs.ca}",
                f"--service-account-key-file={certs.sa_pub}",
                f"--service-account-signing-key-file={certs.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--authorization-mode=Node,RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # /debug/pprof for an admin: benchmarks/operator_reconcile.py --profile-apiserver
                "--profiling=true",
                "--v=1",
                # No node lifecycle controller runs (no kubelets), so nothing would ever lift
                # the not-ready taint this plugin puts on new nodes.
                "--disable-admission-plugins=TaintNodesByCondition",
                # ConfigMaps bypass the watch cache, so a test can force a real watch expiry
                # (410 Gone) by compacting etcd; every other resource is cached as usual.
                "--watch-cache-sizes=configmaps#0",
            ],
            logs / "kube-apiserver.log",
        )
        tls = _tls(certs.ca, certs.admin_cert, certs.admin_key)
        sup.wait_ready(apiserver, lambda: http_ok(f"{server}/readyz", tls), 120)

        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(pki.kubeconfig(server, certs))
        kubeconfig.chmod(0o600)

        cm_port = free_port()
        cm = sup.start(
            "kube-controller-manager",
            [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                "--leader-elect=false",
                f"--service-account-private-key-file={certs.sa_key}",
                f"--root-ca-file={certs.ca}",
                "--use-service-account-credentials=true",
                # No kubelets: node lifecycle would evict from kwok nodes; no cloud for routes.
                "--controllers=*,-nodelifecycle,-nodeipam,-route,-service,-cloud-node-lifecycle",
                "--profiling=false",
            ],
            logs / "kube-controller-manager.log",
        )
        sup.wait_ready(cm, lambda: http_ok(f"https://127.0.0.1:{cm_port}/healthz", _insecure()), 60)

        sched_port = free_port()
        sched = sup.start(
            "kube-scheduler",
            [
                str(bins["kube-scheduler"]),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            logs / "kube-scheduler.log",
        )
        sup.wait_ready(
            sched, lambda: http_ok(f"https://127.0.0.1:{sched_port}/healthz", _insecure()), 60
        )

        kwok_port = free_port()
        kwok = sup.start(
            "kwok",
            [
                str(bins["kwok"]),
                f"--kubeconfig={kubeconfig}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={nodes.KWOK_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                "--cidr=10.244.0.0/16",
                f"--server-address=127.0.0.1:{kwok_port}",
            ],
            logs / "kwok.log",
        )
        sup.wait_ready(kwok, lambda: http_ok(f"http://127.0.0.1:{kwok_port}/healthz"), 60)

        s3_port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        s3 = sup.start("s3", [moto, "-H", "127.0.0.1", "-p", str(s3_port)], logs / "s3.log")
        endpoint = f"http://127.0.0.1:{s3_port}"
        sup.wait_ready(s3, lambda: http_ok(f"{endpoint}/moto-api/"), 30)
        s3_env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
        _create_bucket(s3_env)
        (root / "s3.env").write_text("".join(f"{k}={v}\n" for k, v in s3_env.items()))

        info = ClusterInfo(
            root,
            kubeconfig,
            server,
            endpoint,
            s3_env,
            bins["kubectl"].parent,
            f"http://127.0.0.1:{etcd_port}",
        )
        if node_set is not None:
            info.add_nodes(nodes.load(node_set))
        if executor:
            ex = sup.start(
                "executor",
                [
                    sys.executable,
                    "-m",
                    "tests.cluster.executor",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--work",
                    str(root / "executor"),
                    "--ready-file",
                    str(root / "executor.ready"),
                ],
                logs / "executor.log",
                env={"PYTHONPATH": with_repo_on_path()},
            )
            sup.wait_ready(ex, lambda: (root / "executor.ready").exists(), 60)
        (root / "cluster.json").write_text(
            json.dumps(
                {
                    "kubeconfig": str(kubeconfig),
                    "server": server,
                    "s3Endpoint": endpoint,
                    "bucket": BUCKET,
                    "logs": str(logs),
                },
                indent=2,
            )
        )
        return info
    except BaseException:
        sup.stop_all()
        raise


def with_repo_on_path() -> str:
    """PYTHONPATH for a child that imports `tests.*`: this checkout first, then the caller's."""
    return os.pathsep.join(p for p in (str(HERE.parents[1]), os.environ.get("PYTHONPATH")) if p)


def s3_client(endpoint: str, env: dict[str, str]) -> Any:
    """A boto3 S3 client for the harness's S3 server with the given credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )


def _create_bucket(env: dict[str, str]) -> None:
    s3_client(env["AWS_ENDPOINT_URL"], env).create_bucket(Bucket=BUCKET)


def down(root: Path) -> list[str]:
    return stop_recorded(root / "state.json")
