"""Reconcile throughput and latency of the Kiln operator against the local API server.

    .venv/bin/python benchmarks/operator_reconcile.py [--resources 200] [--nodes 100]

Starts the local cluster (tests/cluster) with M simulated nodes (the default node set scaled:
three GPU types and CPU nodes), installs Kiln from manifests/ and starts the operator as the
Deployment runs it, under its ServiceAccount. One resource is built for real (export and one
Job per target, through the executor); then N resources with the same model and spec, in ten
namespaces, find their results in storage, so builder runs are short-circuited and what is
measured is the operator and the control plane:

1. create:   all N at once; time until every one has a steady status (phase Ready at its
             generation, its Deployment rolled out by the real controllers): resources/s;
2. burst:    every resource's spec changed at once (selection.minSpeedup, re-decided from
             stored measurements): per resource, time from its change to the status showing it;
3. single:   20 changes one at a time on a settled operator: the same latency, unqueued.

Also: status writes per second (status-changing watch events), the operator's peak RSS and CPU
seconds. Everything runs on this machine: the API server, etcd, controllers, kwok and the S3
server compete with the operator for the same cores, so compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster import cluster, nodes  # noqa: E402
from tests.cluster.install import (  # noqa: E402
    OPERATOR_NAMESPACE,
    install,
    operator_command,
    s3_secret,
)
from tests.cluster.models import upload_tiny  # noqa: E402
from tests.conftest import FAST_BENCHMARK  # noqa: E402

GROUP, VERSION, PLURAL = "kiln.dev", "v1alpha1", "optimizedmodels"


def spec(uris: dict[str, str], min_speedup: float = 0.01) -> dict[str, Any]:
    return {
        "source": {"uri": uris["source"]},
        "inputs": [{"name": "image", "shape": [-1, 3, 16, 16]}],
        "outputs": ["logits"],
        "batchSizes": [1, 4],
        "backends": ["pytorch", "onnxruntime"],
        "precisions": ["fp32"],
        "benchmark": FAST_BENCHMARK,
        "accuracy": {"samples": 2},
        "selection": {"minSpeedup": min_speedup},
        "artifacts": {"uri": "s3://kiln/artifacts", "credentialsSecret": "kiln-s3"},
    }


@dataclass
class Recorder:
    """A watch on every OptimizedModel: when each reached (generation, phase), and how many
    events changed a status."""

    custom: Any
    reached: dict[tuple[str, str, int], float] = field(default_factory=dict)
    first_status: dict[tuple[str, str], float] = field(default_factory=dict)
    status_writes: list[float] = field(default_factory=list)
    _last: dict[tuple[str, str], Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                self._watch(watch.Watch())
            except Exception:
                if not self._stop.is_set():
                    raise

    def _watch(self, watcher: Any) -> None:
        stream = watcher.stream(
            self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL, timeout_seconds=600
        )
        for event in stream:
            obj = event["object"]
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            status = obj.get("status") or {}
            now = time.monotonic()
            if status and status != self._last.get(key):
                self.status_writes.append(now)
                self.first_status.setdefault(key, now)
            self._last[key] = status
            if status.get("phase") == "Ready" and all(
                (t.get("readyReplicas") or 0) > 0
                for t in status.get("targets", [])
                if t.get("selected")
            ):
                self.reached.setdefault((*key, status.get("observedGeneration", 0)), now)

    def stop(self) -> None:
        self._stop.set()

    def wait(self, keys: list[tuple[str, str, int]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(k in self.reached for k in keys):
                return
            time.sleep(0.2)
        missing = [k for k in keys if k not in self.reached]
        raise SystemExit(f"timed out: {len(missing)} resources not steady, e.g. {missing[:3]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {percentile(values, 50) * 1000:.0f} | "
        f"{percentile(values, 90) * 1000:.0f} | {percentile(values, 99) * 1000:.0f} | "
        f"{max(values) * 1000:.0f} |"
    )


def process_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a process, from /proc."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return peak, (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8, help="the operator's --workers")
    args = parser.parse_args()
    from kubernetes import client

    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    pools = nodes.load()
    per_scale = sum(int(p.get("count", 1)) for p in pools)
    scale = max(1, round(args.nodes / per_scale))
    info = cluster.up(work / "cluster", node_set=None)
    operator: subprocess.Popen[bytes] | None = None
    recorder: Recorder | None = None
    try:
        info.add_nodes(pools, scale=scale)
        documents = install(info)
        s3_secret(info, OPERATOR_NAMESPACE)
        uris = upload_tiny(info, work)
        api = info.api_client()
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        for ns in ["seed", *namespaces]:
            core.create_namespace({"metadata": {"name": ns}})
            s3_secret(info, ns)
        command = operator_command(
            info, documents, work / "operator", "--workers", str(args.workers)
        )
        log = (work / "operator.log").open("wb")
        operator = subprocess.Popen(
            command.argv, stdout=log, stderr=subprocess.STDOUT, env=command.env
        )
        recorder = Recorder(custom)
        threading.Thread(target=recorder.run, daemon=True).start()

        def body(ns: str, name: str, min_speedup: float = 0.01) -> dict[str, Any]:
            return {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "OptimizedModel",
                "metadata": {"name": name, "namespace": ns},
                "spec": spec(uris, min_speedup),
            }

        started = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, "seed", PLURAL, body("seed", "seed"))
        recorder.wait([("seed", "seed", 1)], 900)
        seeded = time.monotonic() - started
        targets = len(
            {n["metadata"]["labels"].get("nvidia.com/gpu.product") for n in nodes.render(pools)}
        )

        names = [(namespaces[i % len(namespaces)], f"m{i:04d}") for i in range(args.resources)]
        writes_before = len(recorder.status_writes)
        created: dict[tuple[str, str], float] = {}

        def create(key: tuple[str, str]) -> None:
            custom.create_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, body(*key))
            created[key] = time.monotonic()

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, names))
        recorder.wait([(ns, n, 1) for ns, n in names], 1800)
        t1 = max(recorder.reached[(ns, n, 1)] for ns, n in names)
        create_latency = [recorder.reached[(ns, n, 1)] - created[(ns, n)] for ns, n in names]
        first_pass = [recorder.first_status[(ns, n)] - created[(ns, n)] for ns, n in names]
        create_writes = len(recorder.status_writes) - writes_before

        changed: dict[tuple[str, str], float] = {}

        def change(key: tuple[str, str], min_speedup: float) -> None:
            patch = {"spec": {"selection": {"minSpeedup": min_speedup}}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, key[1], patch)
            changed[key] = time.monotonic()

        writes_before = len(recorder.status_writes)
        t2 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda k: change(k, 0.02), names))
        recorder.wait([(ns, n, 2) for ns, n in names], 900)
        t3 = max(recorder.reached[(ns, n, 2)] for ns, n in names)
        burst = [recorder.reached[(ns, n, 2)] - changed[(ns, n)] for ns, n in names]
        burst_writes = len(recorder.status_writes) - writes_before

        time.sleep(5)  # settle
        singles = []
        for ns, n in names[:20]:
            change((ns, n), 0.03)
            recorder.wait([(ns, n, 3)], 120)
            singles.append(recorder.reached[(ns, n, 3)] - changed[(ns, n)])

        with urllib.request.urlopen(command.liveness, timeout=5) as response:
            assert response.status == 200
        peak, cpu = process_stats(operator.pid)
        print(
            f"\nKiln operator: {args.resources} resources, {len(core.list_node().items)} nodes "
            f"({targets} targets each), {args.workers} workers, {os.cpu_count()} CPUs shared "
            "with the whole control plane"
        )
        print(f"seed resource built for real (export + a Job per target): {seeded:.1f}s\n")
        print("| phase | resources | elapsed s | resources/s | status writes/s |")
        print("|---|---|---|---|---|")
        n = args.resources
        print(
            f"| create -> steady (Ready, rolled out) | {n} | {t1 - t0:.1f} | "
            f"{n / (t1 - t0):.1f} | {create_writes / (t1 - t0):.1f} |"
        )
        print(
            f"| spec change burst -> status | {n} | {t3 - t2:.1f} | {n / (t3 - t2):.1f} | "
            f"{burst_writes / (t3 - t2):.1f} |"
        )
        print("\n| latency | samples | p50 ms | p90 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        print(latency_row("create -> first status (the operator's first pass)", first_pass))
        print(
            latency_row("create -> steady status (incl. the Deployment's rollout)", create_latency)
        )
        print(latency_row("spec change -> status (burst of all)", burst))
        print(latency_row("spec change -> status (one at a time)", singles))
        print(f"\noperator peak RSS {peak:.0f} MiB, CPU {cpu:.1f} s over the whole run")
        print(f"spread: create latency stdev {statistics.pstdev(create_latency) * 1000:.0f} ms")
    finally:
        if recorder is not None:
            recorder.stop()
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=30)
            except subprocess.TimeoutExpired:
                operator.kill()
        cluster.down(work / "cluster")


if __name__ == "__main__":
    main()
