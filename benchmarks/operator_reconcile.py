"""The Kiln operator at scale on the local API server: reconcile throughput and latency, API
calls per reconcile, writes of a settled fleet, a new GPU type, and (with 2 replicas) failover.

    .venv/bin/python benchmarks/operator_reconcile.py [--nodes 1000] [--resources 200]
        [--replicas 2] [--resync-seconds 30] [--workers 8]

Starts the local cluster (tests/cluster) with N simulated nodes (tests/cluster/nodes/scale.yaml
scaled: four GPU types and CPU nodes, 100 per unit), installs Kiln from manifests/ and starts
the operator as its Deployment runs it, under its ServiceAccount (with --replicas 2, two
processes and leader election). One resource is built for real (export and one Job per
target); then M resources with the same model and spec, in ten namespaces, find their results
in storage, so no builder runs and what is measured is the operator and the control plane:

1. create:   all M at once: time until every one has its first status, and until every one
             is steady (Ready at its generation, its Deployment rolled out by the controllers);
2. burst:    every spec changed at once (selection.minSpeedup, re-decided from stored
             measurements): status-writing reconciles/s, change -> status latency, and the API
             requests per reconcile by verb, from the API server's apiserver_request_total;
3. single:   50 changes one at a time on a settled operator: the same latency, unqueued;
4. resync:   the settled fleet through a whole resync period: writes the API server received
             (goal 0);
5. new type: a pool of a new GPU type joins (its nodes tainted, so the Jobs stay pending
             instead of running M builders on this machine): every resource gets that
             target's Job and no other;
6. failover: (--replicas 2) the leader SIGKILLed, one spec changed at once: time from the kill
             until the standby leads and until the change shows in the status.

Everything runs on this machine: the API server, etcd, controllers, kwok (heartbeating every
node) and the S3 server compete with the operator for the same cores, so compare runs on the
same machine. The last line is every figure as `RESULT key=value ...`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
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
from tests.cluster.metrics import WRITE_VERBS, Key, delta, request_counts  # noqa: E402
from tests.cluster.models import upload_tiny  # noqa: E402
from tests.cluster.processes import free_port  # noqa: E402
from tests.conftest import FAST_BENCHMARK  # noqa: E402

GROUP, VERSION, PLURAL = "kiln.dev", "v1alpha1", "optimizedmodels"
SCALE_SET = ROOT / "tests" / "cluster" / "nodes" / "scale.yaml"
NEW_TYPE = "NVIDIA-B200"
# What the operator reads and writes; the controllers' own writes (status subresources of
# Deployments and Jobs, node heartbeats) are not its calls.
OPERATOR_RESOURCES = {
    "optimizedmodels",
    "deployments",
    "services",
    "jobs",
    "configmaps",
    "pods",
    "events",
}
Name = tuple[str, str]


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


def body(uris: dict[str, str], ns: str, name: str, min_speedup: float = 0.01) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "OptimizedModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec(uris, min_speedup),
    }


@dataclass
class Recorder:
    """A watch on every OptimizedModel: when each reached (generation, steady), when each got
    its first status, and when statuses changed."""

    custom: Any
    reached: dict[tuple[str, str, int], float] = field(default_factory=dict)
    first_status: dict[Name, float] = field(default_factory=dict)
    status_writes: list[float] = field(default_factory=list)
    _last: dict[Name, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from kubernetes import watch

        while not self._stop.is_set():
            try:
                self._watch(watch.Watch())
            except Exception:
                if not self._stop.is_set():
                    time.sleep(0.5)  # the API server closed the watch: open another

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
        wait_for(lambda: all(k in self.reached for k in keys), timeout, f"{len(keys)} steady")


def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def latency_row(name: str, values: list[float]) -> str:
    return (
        f"| {name} | {len(values)} | {percentile(values, 50) * 1000:.0f} | "
        f"{percentile(values, 90) * 1000:.0f} | {percentile(values, 99) * 1000:.0f} | "
        f"{max(values) * 1000:.0f} |"
    )


def cpu_of(pid: int) -> float | None:
    """CPU seconds a process has used so far (None once it is gone), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_stats(pid: int) -> tuple[float, float]:
    """(peak RSS in MiB, CPU seconds) of a process, from /proc."""
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return peak, cpu_of(pid) or 0.0


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process still there."""
    return {name: cpu for name, pid in pids.items() if (cpu := cpu_of(pid)) is not None}


def cpu_since(before: dict[str, float], pids: dict[str, int]) -> str:
    """CPU seconds each process used since `before`, busiest first."""
    used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds(pids).items()}
    return ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda kv: -kv[1]))


def cluster_pids(operators: dict[str, int]) -> dict[str, int]:
    """The control plane's processes on this machine (by command name), the operators', and
    this script's: who used the cores during a phase."""
    wanted = {"kube-apiserver", "etcd", "kwok", "kube-controller", "kube-scheduler"}
    pids = {
        "benchmark (clients)": os.getpid(),
        **{f"operator {k}": v for k, v in operators.items()},
    }
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            comm = stat.read_text().strip()
        except OSError:
            continue
        if comm in wanted:
            pids[comm] = int(stat.parent.name)
    return pids


def profile_apiserver(info: Any, path: Path, seconds: int = 6) -> None:
    """A CPU profile of the API server (its /debug/pprof endpoint): `go tool pprof -top`."""
    url = f"/debug/pprof/profile?seconds={seconds}"
    done = subprocess.run([*info.kubectl(), "get", "--raw", url], capture_output=True, check=True)
    path.write_bytes(done.stdout)


def operator_requests(counts: Counter[Key]) -> Counter[str]:
    """The operator's requests by `VERB resource[/subresource]` (what the controllers write
    is not counted)."""
    out: Counter[str] = Counter()
    for (verb, resource, sub), n in counts.items():
        if resource not in OPERATOR_RESOURCES:
            continue
        if sub == "status" and resource != "optimizedmodels":
            continue
        out[f"{verb} {resource}{'/' + sub if sub else ''}"] += n
    return out


def operator_calls(counts: Counter[Key]) -> Counter[str]:
    """The operator's requests by verb."""
    out: Counter[str] = Counter()
    for what, n in operator_requests(counts).items():
        out[what.split()[0]] += n
    return out


def fleet_writes(counts: Counter[Key]) -> int:
    return sum(n for verb, n in operator_calls(counts).items() if verb in WRITE_VERBS)


def create_nodes(info: Any, pools: list[dict[str, Any]], scale: int) -> int:
    from kubernetes import client

    core = client.CoreV1Api(info.api_client())
    manifests = nodes.render(pools, scale)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(core.create_node, manifests))
    return len(manifests)


@dataclass
class Bench:
    """What every phase uses: the cluster, the resources' names and the figures so far."""

    info: Any
    custom: Any
    recorder: Recorder
    uris: dict[str, str]
    names: list[Name]
    figures: dict[str, str] = field(default_factory=dict)
    phases: list[str] = field(default_factory=list)  # rows of the phase table
    latencies: list[str] = field(default_factory=list)  # rows of the latency table
    notes: list[str] = field(default_factory=list)
    profile: Path | None = None  # where to keep a CPU profile of the API server in the burst
    pids: dict[str, int] = field(default_factory=dict)  # the processes sharing the cores

    def change(self, key: Name, min_speedup: float) -> float:
        patch = {"spec": {"selection": {"minSpeedup": min_speedup}}}
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, key[1], patch)
        return time.monotonic()


@dataclass
class Operators:
    """One operator process per replica, started from the rendered Deployment; with more than
    one, each has an identity of its own and leader election on."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    replicas: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, identity: str) -> None:
        extra = ["--leader-election", "--identity", identity] if self.replicas > 1 else []
        # Each replica its own liveness port, as each pod has its own network namespace.
        extra += ["--liveness", f"http://127.0.0.1:{free_port()}/healthz"]
        with self.log.open("ab") as out:
            self.processes[identity] = subprocess.Popen(
                [*self.argv, *extra], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def leader(self, coordination: Any) -> str | None:
        if self.replicas == 1:
            return next(iter(self.processes))
        lease = coordination.read_namespaced_lease("kiln-operator", OPERATOR_NAMESPACE)
        holder: str | None = lease.spec.holder_identity
        return holder or None

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def phase_create(bench: Bench) -> None:
    created: dict[Name, float] = {}

    def create(key: Name) -> None:
        document = body(bench.uris, *key)
        bench.custom.create_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, document)
        created[key] = time.monotonic()

    before = len(bench.recorder.status_writes)
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, bench.names))
    bench.recorder.wait([(ns, n, 1) for ns, n in bench.names], 1800)
    t1 = max(bench.recorder.reached[(ns, n, 1)] for ns, n in bench.names)
    first = [bench.recorder.first_status[k] - created[k] for k in bench.names]
    steady = [bench.recorder.reached[(*k, 1)] - created[k] for k in bench.names]
    everyone_first = max(bench.recorder.first_status[k] for k in bench.names) - t0
    writes = len(bench.recorder.status_writes) - before
    n = len(bench.names)
    bench.phases.append(
        f"| create -> steady (Ready, rolled out) | {n} | {t1 - t0:.1f} | {n / (t1 - t0):.1f} | "
        f"{writes / (t1 - t0):.1f} |"
    )
    bench.latencies.append(latency_row("create -> first status (the operator's first pass)", first))
    bench.latencies.append(latency_row("create -> steady (incl. the Deployment's rollout)", steady))
    bench.figures["create_first_status_s"] = f"{everyone_first:.1f}"
    bench.figures["create_steady_s"] = f"{t1 - t0:.1f}"


def phase_burst(bench: Bench) -> None:
    changed: dict[Name, float] = {}
    counts = request_counts(bench.info)
    before = len(bench.recorder.status_writes)
    cpu = cpu_seconds(bench.pids)
    if bench.profile is not None:
        threading.Thread(target=profile_apiserver, args=(bench.info, bench.profile)).start()
    t2 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: changed.__setitem__(k, bench.change(k, 0.02)), bench.names))
    bench.recorder.wait([(ns, n, 2) for ns, n in bench.names], 900)
    busy = cpu_since(cpu, bench.pids)
    spent = time.monotonic() - t2
    t3 = max(bench.recorder.reached[(*k, 2)] for k in bench.names)
    latency = [bench.recorder.reached[(*k, 2)] - changed[k] for k in bench.names]
    writes = len(bench.recorder.status_writes) - before
    time.sleep(2)  # the API server's counters of the last requests
    counted = delta(counts, request_counts(bench.info))
    n = len(bench.names)
    top = ", ".join(f"{' '.join(k).strip()} {v}" for k, v in counted.most_common(8))
    bench.notes.append(f"every client's requests in the burst, most first: {top}")
    counted[("PATCH", PLURAL, "")] -= n  # this script's own spec changes
    counted = +counted
    calls = operator_calls(counted)
    bench.phases.append(
        f"| spec change burst -> status | {n} | {t3 - t2:.1f} | {n / (t3 - t2):.1f} | "
        f"{writes / (t3 - t2):.1f} |"
    )
    bench.latencies.append(latency_row("spec change -> status (burst of all)", latency))
    per = ", ".join(
        f"{what} {count / n:.2f}" for what, count in sorted(operator_requests(counted).items())
    )
    bench.notes.append(f"API requests per reconcile in the burst, by verb: {per}")
    bench.notes.append(
        f"CPU seconds in the burst ({spent:.1f} s on {os.cpu_count()} cores): {busy}"
    )
    bench.figures["burst_reconciles_per_s"] = f"{writes / (t3 - t2):.1f}"
    bench.figures["burst_p99_s"] = f"{percentile(latency, 99):.2f}"
    bench.figures["burst_requests_per_reconcile"] = f"{sum(calls.values()) / n:.2f}"
    bench.figures["burst_writes_per_reconcile"] = f"{fleet_writes(counted) / n:.2f}"


def phase_single(bench: Bench, samples: int = 50) -> None:
    time.sleep(5)  # settle
    singles = []
    for i in range(samples):
        key = bench.names[i % len(bench.names)]
        generation = 3 + i // len(bench.names)
        at = bench.change(key, 0.03 + 0.001 * i)
        bench.recorder.wait([(*key, generation)], 120)
        singles.append(bench.recorder.reached[(*key, generation)] - at)
    bench.latencies.append(latency_row("spec change -> status (one at a time)", singles))
    bench.figures["single_p99_ms"] = f"{percentile(singles, 99) * 1000:.0f}"


def phase_resync(bench: Bench, resync_seconds: float) -> None:
    """A whole resync period (+25 %, past the jitter) of a settled fleet: the writes sent."""
    time.sleep(3)
    counts = request_counts(bench.info)
    cpu = cpu_seconds(bench.pids)
    time.sleep(resync_seconds * 1.25)
    busy = cpu_since(cpu, bench.pids)
    counted = delta(counts, request_counts(bench.info))
    writes = fleet_writes(counted)
    reads = ", ".join(f"{what} {n}" for what, n in sorted(operator_requests(counted).items()))
    bench.notes.append(
        f"settled resync ({resync_seconds * 1.25:.0f} s): {writes} writes; operator requests: "
        f"{reads or 'none'}"
    )
    bench.notes.append(f"CPU seconds of the settled fleet over that period: {busy}")
    bench.figures["resync_writes"] = str(writes)


def phase_new_type(bench: Bench, nodes_of_type: int = 10) -> None:
    """A node pool of a new GPU type: every resource gets its Job for that target, and only
    that. The pool is tainted, so the Jobs' pods stay pending (no builder runs here)."""
    from kubernetes import client

    batch = client.BatchV1Api(bench.info.api_client())
    namespaces = sorted({ns for ns, _ in bench.names})

    def jobs() -> list[Any]:
        return [j for ns in namespaces for j in batch.list_namespaced_job(ns).items]

    before = {(j.metadata.namespace, j.metadata.name) for j in jobs()}
    pool = {
        "name": "b200",
        "count": nodes_of_type,
        "labels": {"nvidia.com/gpu.product": NEW_TYPE, "nvidia.com/gpu.present": "true"},
        "allocatable": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8"},
        "taints": [{"key": "kiln.dev/benchmark", "value": "hold", "effect": "NoSchedule"}],
    }
    t0 = time.monotonic()
    create_nodes(bench.info, [pool], 1)
    owners = {n for _, n in bench.names}

    def new_jobs() -> list[Any]:
        return [j for j in jobs() if (j.metadata.namespace, j.metadata.name) not in before]

    wait_for(lambda: len(new_jobs()) >= len(owners), 600, f"Jobs for {NEW_TYPE}", every=1.0)
    elapsed = time.monotonic() - t0
    time.sleep(5)  # anything else the operator would start shows up now
    made = new_jobs()
    target = NEW_TYPE.lower()
    right = [j for j in made if j.metadata.labels.get("kiln.dev/target") == target]
    per_owner = Counter(j.metadata.labels.get("kiln.dev/model") for j in right)
    bench.notes.append(
        f"new GPU type {NEW_TYPE} ({nodes_of_type} nodes): {len(made)} Jobs in {elapsed:.1f} s, "
        f"{len(right)} for the new target, {len(made) - len(right)} others, "
        f"{sum(1 for c in per_owner.values() if c > 1)} resources with more than one"
    )
    bench.figures["new_type_jobs"] = str(len(right))
    bench.figures["new_type_other_jobs"] = str(len(made) - len(right))
    bench.figures["new_type_s"] = f"{elapsed:.1f}"


def phase_failover(bench: Bench, operators: Operators) -> None:
    """SIGKILL the leader, change one spec at once: until the standby leads, until it shows."""
    from kubernetes import client

    coordination = client.CoordinationV1Api(bench.info.api_client())
    leader = operators.leader(coordination)
    assert leader is not None, "no replica holds the Lease"
    key = bench.names[0]
    killed = time.monotonic()
    operators.processes[leader].send_signal(signal.SIGKILL)
    bench.change(key, 0.0105)
    obj = bench.custom.get_namespaced_custom_object(GROUP, VERSION, key[0], PLURAL, key[1])
    generation = obj["metadata"]["generation"]
    wait_for(lambda: operators.leader(coordination) not in (None, leader), 300, "a new leader")
    leads = time.monotonic() - killed
    bench.recorder.wait([(*key, generation)], 300)
    shown = bench.recorder.reached[(*key, generation)] - killed
    bench.notes.append(
        f"failover: leader {leader} SIGKILLed; the standby led after {leads:.1f} s, the spec "
        f"change made at the kill was in the status after {shown:.1f} s"
    )
    bench.figures["failover_s"] = f"{shown:.1f}"
    bench.figures["failover_lead_s"] = f"{leads:.1f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=1000, help="simulated nodes (100 a unit)")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--workers", type=int, default=8, help="the operator's --workers")
    parser.add_argument("--replicas", type=int, default=2, choices=(1, 2))
    parser.add_argument("--resync-seconds", type=float, default=30.0)
    parser.add_argument(
        "--profile-apiserver", type=Path, help="keep a CPU profile of the API server in the burst"
    )
    return parser.parse_args()


def prepare(info: Any, args: argparse.Namespace, work: Path) -> tuple[Operators, Bench]:
    """Nodes, Kiln's manifests, the model in S3, namespaces; the operators not yet started."""
    from kubernetes import client

    scale = max(1, round(args.nodes / 100))
    create_nodes(info, nodes.load(SCALE_SET), scale)
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
        info,
        documents,
        work / "operator",
        *("--workers", str(args.workers), "--resync-seconds", str(args.resync_seconds)),
    )
    operators = Operators(command.argv, command.env, work / "operator.log", args.replicas)
    names = [(namespaces[i % len(namespaces)], f"m{i:04d}") for i in range(args.resources)]
    recorder = Recorder(custom)
    return operators, Bench(info, custom, recorder, uris, names, profile=args.profile_apiserver)


def report(
    bench: Bench, args: argparse.Namespace, seeded: float, stats: tuple[float, float]
) -> None:
    from kubernetes import client

    count = len(client.CoreV1Api(bench.info.api_client()).list_node().items)
    print(
        f"\nKiln operator: {args.resources} resources, {count} nodes, {args.workers} workers, "
        f"{args.replicas} replica(s), {os.cpu_count()} CPUs shared with the whole control plane"
    )
    print(f"seed resource built for real (export + a Job per target): {seeded:.1f}s\n")
    print("| phase | resources | elapsed s | resources/s | status writes/s |")
    print("|---|---|---|---|---|")
    for row in bench.phases:
        print(row)
    print("\n| latency | samples | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for row in bench.latencies:
        print(row)
    print()
    for note in bench.notes:
        print(note)
    peak, cpu = stats
    print(f"operator peak RSS {peak:.0f} MiB, CPU {cpu:.1f} s (the replica that led throughout)")
    bench.figures["rss_mib"] = f"{peak:.0f}"
    bench.figures["cpu_s"] = f"{cpu:.1f}"
    bench.figures["nodes"] = str(count)
    bench.figures["resources"] = str(args.resources)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in bench.figures.items()))


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    info = cluster.up(work / "cluster", node_set=None)
    operators: Operators | None = None
    bench: Bench | None = None
    try:
        operators, bench = prepare(info, args, work)
        for i in range(args.replicas):
            operators.start(f"kiln-operator-{i}")
        bench.pids = cluster_pids({k: p.pid for k, p in operators.processes.items()})
        threading.Thread(target=bench.recorder.run, daemon=True).start()
        started = time.monotonic()
        seed = body(bench.uris, "seed", "seed")
        bench.custom.create_namespaced_custom_object(GROUP, VERSION, "seed", PLURAL, seed)
        bench.recorder.wait([("seed", "seed", 1)], 900)
        seeded = time.monotonic() - started
        phases: list[Callable[[Bench], None]] = [
            phase_create,
            phase_burst,
            phase_single,
            lambda b: phase_resync(b, args.resync_seconds),
            phase_new_type,
        ]
        for phase in phases:
            phase(bench)
            print(f"# so far: {bench.figures}", flush=True)  # what a run cut short still shows
        from kubernetes import client

        leader = operators.leader(client.CoordinationV1Api(info.api_client()))
        stats = process_stats(operators.processes[leader or next(iter(operators.processes))].pid)
        if args.replicas > 1:
            phase_failover(bench, operators)
        report(bench, args, seeded, stats)
    finally:
        if bench is not None:
            bench.recorder.stop()
        if operators is not None:
            operators.stop()
        cluster.down(work / "cluster")


if __name__ == "__main__":
    main()
