"""Faults the operator and its Jobs must ride out, on the local cluster (issue 14, items 1-2).

- **S3 outage.** The operator and the builder pods reach S3 through tests/faults/tcp_outage.py,
  which goes down in the middle of the export Job's first upload and again in the middle of a
  build Job's first upload, and comes back after OUTAGE_SECONDS: the Jobs retry (exit 3, never
  a Failed resource), the resource shows Degraded=True StorageUnavailable meanwhile, every
  manifest matches its files, and the resource ends Ready with the same result (request keys,
  candidates and their gates) as the same spec built without an outage.
- **API server restart, 409 and 410.** A burst of BURST resources is applied and the API server
  restarted in its middle, while tests/faults/api_faults.py answers every CONFLICT_EVERY-th
  write of the operator with 409 Conflict and ends each watch stream after GONE_AFTER events
  with 410 Gone. Every resource ends Ready, every status written, no Job started twice, no
  child orphaned.

The operator runs as in test_operator.py, restarted as a kubelet would after the exits its
design allows (tests/e2e/faults.py)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from kubernetes import client

from tests.cluster.cluster import ClusterInfo, s3_client, with_repo_on_path
from tests.cluster.install import (
    OPERATOR_NAMESPACE,
    install,
    operator_command,
    s3_secret,
)
from tests.conftest import FAST_BENCHMARK
from tests.e2e.faults import Restarting, ledger
from tests.e2e.test_operator import (
    apply,
    conditions,
    describe,
    job_names,
    namespace,
    ready,
    resource,
    status_of,
    wait_status,
)
from tests.faults.figures import report
from tests.faults.tcp_outage import TcpOutage
from tests.fixtures.artifacts import check_manifests, folders, published

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
OUTAGE_SECONDS = 20.0
BURST = 50
BUILDING = 3  # of the burst: new measurement settings, so real build Jobs run
CONFLICT_EVERY = 7
GONE_AFTER = 25
# One CPU target that is built and served, one GPU type whose build is SKIPPED (simulated GPU).
TWO_TARGETS = {"cpu": True, "gpuTypes": ["NVIDIA-L4"]}


def start_operator(
    info: ClusterInfo, folder: Path, wrap: str | None = None, env: dict[str, str] | None = None
) -> Restarting:
    """The operator of the rendered Deployment; `wrap`: a tests.faults module that runs it."""
    documents = install(info)
    s3_secret(info, OPERATOR_NAMESPACE)
    command = operator_command(info, documents, folder, "--resync-seconds", "30")
    argv = command.argv if wrap is None else [sys.executable, "-m", wrap, *command.argv[1:]]
    full_env = {**command.env, "PYTHONPATH": with_repo_on_path(), **(env or {})}
    op = Restarting(info, argv, full_env, folder / "operator.log", command.liveness)
    op.start()
    return op


@pytest.fixture
def outage(cluster: ClusterInfo) -> Iterator[TcpOutage]:
    s3 = urlparse(cluster.s3_endpoint)
    proxy = TcpOutage((s3.hostname or "127.0.0.1", s3.port or 80))
    with proxy.running():
        yield proxy
    s3_secret(cluster, OPERATOR_NAMESPACE)  # the direct endpoint again, for the next modules


def stopped(op: Restarting) -> None:
    op.stop()
    print(f"--- operator, {op.starts} start(s), exits {op.exits} ---")
    print(op.log.read_text(errors="replace")[-4000:])


def storage_degraded(status: dict[str, Any]) -> bool:
    degraded = conditions(status).get("Degraded", {})
    return degraded.get("status") == "True" and degraded.get("reason") == "StorageUnavailable"


def outcome(status: dict[str, Any]) -> dict[str, Any]:
    """What must not depend on an outage: each target's state, and each candidate's state,
    gate verdict and artifact key (content-addressed: the same bytes in, the same key), not
    timings, which are noise. (A target's request key names its artifact root, so it differs.)"""
    return {
        t["name"]: (
            t["state"],
            sorted(
                (c["name"], c["state"], (c.get("accuracy") or {}).get("passed"), c.get("cacheKey"))
                for c in t.get("candidates", [])
            ),
        )
        for t in status["targets"]
    }


def test_an_s3_outage_mid_upload_is_retried_and_ends_as_without_it(
    cluster: ClusterInfo, tiny_uploaded: None, outage: TcpOutage, tmp_path: Path
) -> None:
    proxied = replace(
        cluster,
        s3_endpoint=outage.endpoint,
        s3_env={**cluster.s3_env, "AWS_ENDPOINT_URL": outage.endpoint},
    )
    op = start_operator(proxied, tmp_path)
    try:
        _outage_run(op, outage)
    finally:
        stopped(op)


def _outage_run(op: Restarting, outage: TcpOutage) -> None:
    # A calibration sample count of its own: a new export key, so the export Job runs too.
    spec: dict[str, Any] = {"targets": TWO_TARGETS, "calibration": _calibration(12)}

    def artifacts(root: str) -> dict[str, Any]:
        return {"artifacts": {"uri": f"s3://kiln/{root}", "credentialsSecret": "kiln-s3"}}

    control_ns = namespace(op, "steady")
    apply(op, resource("steady", control_ns, **spec, **artifacts("steady")))
    control = wait_status(op, control_ns, "steady", ready(), "the control run Ready", 600)

    ns = namespace(op, "outage")
    outage.trip_on(b"PUT ")
    apply(op, resource("outage", ns, **spec, **artifacts("outage")))
    degraded: list[str] = []
    for stage in ("export", "build"):
        if stage == "build":
            built = _noting(lambda _: any("-build-" in j for j in job_names(op, ns)), degraded)
            wait_status(op, ns, "outage", built, "a build Job", 300)
            outage.trip_on(b"PUT ")
        assert outage.tripped.wait(300), f"no upload of the {stage} Job reached S3"
        down_at = time.monotonic()
        print(f"\nS3 down mid-upload of the {stage} Job: {outage.tripped_on}")
        seen = wait_status(op, ns, "outage", storage_degraded, "Degraded StorageUnavailable", 120)
        degraded.append(conditions(seen)["Degraded"]["message"])
        assert seen["phase"] != "Failed"
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        outage.up()
    status = wait_status(op, ns, "outage", _noting(ready(), degraded), "Ready after it", 600)
    print("Degraded during and after the outages:\n  " + "\n  ".join(dict.fromkeys(degraded)))
    # The Jobs' own retries showed too, not only the operator's failed reads.
    assert any("pod(s) failed, the last with exit 3" in m for m in degraded), degraded

    assert conditions(status)["Degraded"]["status"] == "False", describe(status)
    assert outcome(status) == outcome(control)
    books = ledger(op.api(), [ns])
    assert set(books.pod_exits) <= {0, 3}, books.pod_exits  # retried as transient, no crash
    assert books.pod_exits[3] >= 2, books.pod_exits  # the export's pod and a build's pod
    assert books.duplicates == 0
    assert books.orphans == []
    s3 = s3_client(op.cluster.s3_endpoint, op.cluster.s3_env)
    stored = folders(s3, op.cluster.bucket, "outage/")
    half = check_manifests(stored)  # every manifest matches its files
    results = [t["result"] for t in status["targets"] if t.get("result")]
    assert len(results) == 1  # the CPU target's (the simulated GPU's is SKIPPED)
    for uri in results:
        assert published(stored, uri, op.cluster.bucket), uri
    print(f"Pods by exit code {dict(books.pod_exits)}; half-written folders left: {half}")
    report(
        "S3 down mid-upload of the export Job, then of a build Job",
        faults=f"2 outages of {OUTAGE_SECONDS:.0f} s; {books.pod_exits[3]} builder pods exit 3",
        resources="1 (+1 control)",
        jobs=f"{sum(books.jobs.values())} (3)",
        duplicates=books.duplicates,
        lost=0,  # asserted above: Ready, every manifest matches, the same outcome as the control
    )


def _unique(spec: dict[str, Any], i: int) -> dict[str, Any]:
    """`spec` with measurement settings of its own: new target keys, so real builds run."""
    return {**spec, "benchmark": {**spec["benchmark"], "warmupIterations": 10 + i}}


def _noting(
    predicate: Callable[[dict[str, Any]], bool], degraded: list[str]
) -> Callable[[dict[str, Any]], bool]:
    """`predicate`, noting every Degraded message it is shown on the way."""

    def check(status: dict[str, Any]) -> bool:
        if storage_degraded(status):
            degraded.append(conditions(status)["Degraded"]["message"])
        return predicate(status)

    return check


def _calibration(samples: int) -> dict[str, Any]:
    return {"uri": "s3://kiln/models/tiny/calibration", "samples": samples, "method": "minmax"}


def test_a_burst_rides_out_an_api_server_restart_409s_and_410s(
    cluster: ClusterInfo, tiny_uploaded: None, tmp_path: Path
) -> None:
    faults = tmp_path / "faults.log"
    env = {
        "KILN_FAULT_CONFLICT_EVERY": str(CONFLICT_EVERY),
        "KILN_FAULT_GONE_AFTER": str(GONE_AFTER),
        "KILN_FAULTS_FILE": str(faults),
    }
    op = start_operator(cluster, tmp_path, "tests.faults.api_faults", env)
    try:
        _burst_run(op, cluster, faults)
    finally:
        stopped(op)


def _burst_run(op: Restarting, cluster: ClusterInfo, faults: Path) -> None:
    # The stored spec first (built here when this module runs alone): the burst reuses it.
    seed = namespace(op, "seed")
    apply(op, resource("seed", seed))
    wait_status(op, seed, "seed", ready(), "the seed Ready", 900)
    ns = namespace(op, "burst")
    building = {"targets": TWO_TARGETS, "benchmark": FAST_BENCHMARK}
    documents = [
        resource(f"burst-{i:02d}", ns, **_unique(building, i) if i < BUILDING else {})
        for i in range(BURST)
    ]
    apply(op, *documents)
    down = cluster.restart_apiserver(pause=2.0)
    print(f"\nAPI server restarted mid-burst: unreachable for {down:.1f}s")
    for document in documents:
        name = document["metadata"]["name"]
        wait_status(op, ns, name, ready(), "phase Ready after the restart", 600)

    injected = Counter(line.split()[0] for line in faults.read_text().splitlines())
    books = ledger(op.api(), [ns])
    builder_pods = client.CoreV1Api(op.api()).list_namespaced_pod(
        ns, label_selector="kiln.dev/component=builder"
    )
    print(
        f"faults injected {dict(injected)}; operator exits {op.exits}; "
        f"Jobs {sum(books.jobs.values())}; builder pods {len(builder_pods.items)}"
    )
    report(
        f"API server restarted in a burst of {BURST} resources, 409s and 410s injected",
        faults=f"1 restart ({down:.0f} s down), {injected['409']} 409s, {injected['410']} 410s, "
        f"{len(op.exits)} operator exits (restarted)",
        resources=BURST,
        jobs=f"{sum(books.jobs.values())} ({2 * BUILDING})",
        duplicates=books.duplicates,
        lost=0,  # asserted below: every resource Ready, its status written
    )
    assert injected["409"] > 0, injected
    assert injected["410"] > 0, injected
    assert books.duplicates == 0
    assert books.orphans == []
    assert sum(books.jobs.values()) == 2 * BUILDING  # one per target of each building resource
    assert len(builder_pods.items) == 2 * BUILDING  # no Job started a second pod either
    for document in documents:
        status = status_of(op, ns, document["metadata"]["name"])
        assert conditions(status)["Degraded"]["status"] == "False", describe(status)
