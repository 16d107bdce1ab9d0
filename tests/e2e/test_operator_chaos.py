"""Chaos across many builds (issue 14, item 3), on the local cluster.

RESOURCES resources, a seeded mix of four kinds:
- `stored`: the spec test_operator.py builds (built here first when run alone): no Job at all;
- `build`: new measurement settings, so both of its targets are built for real (2 Jobs);
- `export`: a calibration sample count of its own too, so the export runs as well (3 Jobs);
- `bad`: a source that is no model, a designed bad input: Failed, its export Job failed once.
Meanwhile the operator is SIGKILLed OPERATOR_KILLS times at random moments (and restarted as a
kubelet would), and up to POD_KILLS builder processes are SIGKILLed mid-run (at most one per
Job, so no Job exhausts its backoffLimit on kills alone; at least one, fewer than POD_KILLS when
the builds end first).

At the end: every resource Ready (or Failed for the bad input), 0 duplicate Jobs per request,
Jobs = distinct requests, 0 lost results (each built target's result is in storage with a
manifest that matches its files), 0 orphaned children. The seed and every kill's time are
printed, so a failure can be replayed with KILN_CHAOS_SEED.

CI runs a small size; the full one is
    KILN_CHAOS_RESOURCES=30 KILN_CHAOS_KILLS=10 KILN_CHAOS_POD_KILLS=6 \\
        .venv/bin/pytest tests/e2e/test_operator_chaos.py -s
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.cluster import ClusterInfo, s3_client
from tests.conftest import FAST_BENCHMARK
from tests.e2e.faults import Ledger, Restarting, ledger
from tests.e2e.test_operator import (
    apply,
    conditions,
    describe,
    namespace,
    ready,
    resource,
    status_of,
    wait_status,
)
from tests.e2e.test_operator_faults import (
    TWO_TARGETS,
    start_operator,
    stopped,
)
from tests.faults.figures import report
from tests.fixtures.artifacts import check_manifests, folders, published

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(3600)]
RESOURCES = int(os.environ.get("KILN_CHAOS_RESOURCES", "8"))
OPERATOR_KILLS = int(os.environ.get("KILN_CHAOS_KILLS", "4"))
POD_KILLS = int(os.environ.get("KILN_CHAOS_POD_KILLS", "2"))
SEED = int(os.environ.get("KILN_CHAOS_SEED", str(random.SystemRandom().randrange(10**6))))
JOBS_OF = {"stored": 0, "build": 2, "export": 3, "bad": 1}
BROKEN = "s3://kiln/models/broken/broken.pt2"


@dataclass(frozen=True)
class Planned:
    name: str
    kind: str
    spec: dict[str, Any]


def plan(rng: random.Random, count: int) -> list[Planned]:
    """The seeded mix: at least one of each kind, then the rest at random."""
    kinds = ["stored", "build", "export", "bad"]
    kinds += rng.choices(["stored", "build", "export", "bad"], [4, 4, 2, 1], k=count - 4)
    rng.shuffle(kinds)
    out = []
    exports = 0
    for i, kind in enumerate(kinds):
        # Settings of its own per resource, so each request is distinct from every other one
        # in this session (other modules use warmupIterations 3 and 10+, samples 12 and 16).
        bench = {**FAST_BENCHMARK, "warmupIterations": 40 + i}
        spec: dict[str, Any] = {
            "stored": {},
            "build": {"targets": TWO_TARGETS, "benchmark": bench},
            "export": {
                "targets": TWO_TARGETS,
                "benchmark": bench,
                # The tiny set has 32 samples; 12 and 16 are other modules' counts.
                "calibration": {
                    "uri": "s3://kiln/models/tiny/calibration",
                    "samples": 31 - exports,
                    "method": "minmax",
                },
            },
            "bad": {"source": {"uri": BROKEN}, "benchmark": bench},
        }[kind]
        exports += kind == "export"
        out.append(Planned(f"chaos-{i:02d}-{kind}", kind, spec))
    return out


def builder_processes(executor_work: Path) -> dict[str, int]:
    """Pod uid -> pid of the builder processes the executor runs (their cwd is its folder)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = (proc / "cwd").resolve()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cwd.parent == executor_work and b"build" in cmdline:
            found[cwd.name] = int(proc.name)
    return found


class Chaos:
    """Kills at seeded random moments, logged with their time: the operator every 2-8 s; a
    builder 1-4 s after the last builder kill, at the first moment one is running (builds are
    the scarcer chance: all of them may be over within half a minute)."""

    def __init__(self, op: Restarting, cluster: ClusterInfo, rng: random.Random) -> None:
        self.op, self.rng = op, rng
        self.work = cluster.root / "executor"
        self.started = time.monotonic()
        self.next_operator = self.started + rng.uniform(2, 8)
        self.next_builder = self.started + rng.uniform(1, 4)
        self.operator_kills = 0
        self.pod_kills = 0
        self.jobs_hit: set[str] = set()

    def tick(self) -> None:
        self.op.check_alive()
        now = time.monotonic()
        if self.pod_kills < POD_KILLS and now >= self.next_builder and self._kill_a_builder():
            self.next_builder = now + self.rng.uniform(1, 4)
        if self.operator_kills < OPERATOR_KILLS and now >= self.next_operator:
            self.next_operator = now + self.rng.uniform(2, 8)
            self.op.kill()
            self.operator_kills += 1
            self._note("SIGKILL operator")

    def _kill_a_builder(self) -> bool:
        running = builder_processes(self.work)
        if not running:
            return False
        core = client.CoreV1Api(self.op.api())
        pods = {p.metadata.uid: p for p in core.list_pod_for_all_namespaces().items}
        for uid, pid in sorted(running.items()):
            pod = pods.get(uid)
            if pod is None:
                continue
            job = f"{pod.metadata.namespace}/{(pod.metadata.labels or {}).get('job-name')}"
            if job in self.jobs_hit:
                continue
            os.kill(pid, signal.SIGKILL)
            self.jobs_hit.add(job)
            self.pod_kills += 1
            self._note(f"SIGKILL builder of Job {job}")
            return True
        return False

    def _note(self, what: str) -> None:
        print(f"t={time.monotonic() - self.started:6.1f}s {what}", flush=True)

    @property
    def done(self) -> bool:
        """Every operator kill sent; builder kills only while builders run (all may be done)."""
        return self.operator_kills >= OPERATOR_KILLS


def settled(planned: Planned, status: dict[str, Any]) -> bool:
    if planned.kind == "bad":
        return status.get("phase") == "Failed"
    return bool(ready()(status))


def test_chaos_kills_lose_nothing_and_duplicate_no_job(
    cluster: ClusterInfo, tiny_uploaded: None, tmp_path: Path
) -> None:
    print(
        f"\nchaos: seed {SEED}, {RESOURCES} resources, {OPERATOR_KILLS} operator kills, "
        f"{POD_KILLS} builder kills (replay: KILN_CHAOS_SEED={SEED})"
    )
    rng = random.Random(SEED)
    op = start_operator(cluster, tmp_path)
    try:
        _chaos_run(op, cluster, rng, tmp_path)
    finally:
        stopped(op)


def _chaos_run(op: Restarting, cluster: ClusterInfo, rng: random.Random, tmp: Path) -> None:
    seed_ns = namespace(op, "chaos-seed")  # the stored results the `stored` kind reuses
    apply(op, resource("seed", seed_ns))
    wait_status(op, seed_ns, "seed", ready(), "the seed Ready", 900)

    ns = namespace(op, "chaos")
    planned = plan(rng, RESOURCES)
    print("mix: " + ", ".join(f"{p.name}" for p in planned))
    apply(op, *(resource(p.name, ns, **p.spec) for p in planned))
    chaos = Chaos(op, cluster, rng)
    deadline = time.monotonic() + 1800
    pending = list(planned)
    while pending or not chaos.done:
        assert time.monotonic() < deadline, "chaos run did not settle: " + _last(op, ns, pending)
        chaos.tick()
        pending = [p for p in pending if not settled(p, status_of(op, ns, p.name))]
        time.sleep(0.5)
    time.sleep(5)  # the last kill's restart has listed everything and passed once more
    op.check_alive()
    unsettled = [p.name for p in planned if not settled(p, status_of(op, ns, p.name))]
    assert unsettled == [], _last(op, ns, [p for p in planned if p.name in unsettled])

    books = ledger(op.api(), [ns])
    lost = _lost_results(op, ns, planned)
    _report(chaos, books, planned, lost)
    expected = {p.name: JOBS_OF[p.kind] for p in planned}
    by_resource = Counter(owner for (_, owner, _), n in books.jobs.items() for _ in range(n))
    assert books.duplicates == 0
    assert dict(by_resource) == {n: j for n, j in expected.items() if j}
    assert lost == []
    assert books.orphans == []
    for p in planned:
        status = status_of(op, ns, p.name)
        if p.kind == "bad":
            assert conditions(status)["Exported"]["reason"] == "ExportFailed", describe(status)
    assert chaos.operator_kills == OPERATOR_KILLS
    assert chaos.pod_kills >= min(1, POD_KILLS)  # at least one builder died mid-run


def _lost_results(op: Restarting, ns: str, planned: list[Planned]) -> list[str]:
    """Ready resources whose built targets' results are not complete in storage."""
    s3 = s3_client(op.cluster.s3_endpoint, op.cluster.s3_env)
    stored = folders(s3, op.cluster.bucket, "artifacts/")
    check_manifests(stored)
    lost = []
    for p in planned:
        if p.kind == "bad":
            continue
        for target in status_of(op, ns, p.name)["targets"]:
            if target["state"] != "OK":  # a simulated GPU's target is SKIPPED: no result
                continue
            if not published(stored, target.get("result") or "", op.cluster.bucket):
                lost.append(f"{p.name}/{target['name']}")
    return lost


def _report(chaos: Chaos, books: Ledger, planned: list[Planned], lost: list[str]) -> None:
    kinds = Counter(p.kind for p in planned)
    print(
        "\n| faults injected | resources | Jobs | expected Jobs | duplicates | lost results "
        "| orphans | builder pods by exit code |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {chaos.operator_kills} operator SIGKILLs, {chaos.pod_kills} builder SIGKILLs "
        f"| {len(planned)} ({dict(kinds)}) | {sum(books.jobs.values())} "
        f"| {sum(JOBS_OF[p.kind] for p in planned)} | {books.duplicates} | {len(lost)} "
        f"| {len(books.orphans)} | {dict(books.pod_exits)} |"
    )
    print(f"operator exits seen: {chaos.op.exits}; seed {SEED}")
    report(
        f"chaos, seed {SEED}",
        faults=f"{chaos.operator_kills} operator SIGKILLs, {chaos.pod_kills} builder SIGKILLs",
        resources=f"{len(planned)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})",
        jobs=f"{sum(books.jobs.values())} ({sum(JOBS_OF[p.kind] for p in planned)})",
        duplicates=books.duplicates,
        lost=len(lost),
    )


def _last(op: Restarting, ns: str, pending: list[Planned]) -> str:
    return "\n".join(f"{p.name}: {describe(status_of(op, ns, p.name))}" for p in pending[:5])
