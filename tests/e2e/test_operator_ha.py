"""Two operator replicas, one leader (kiln.operator.leader), on the local cluster.

Both replicas are started from the rendered Deployment the way tests/e2e/test_operator.py
starts one (its command, the ConfigMap's KILN_LEADER_ELECTION, the ServiceAccount's token, and
the pod's name as the identity, here `a` and `b`), with a short lease so that failover takes
seconds: `--lease-seconds 6`, hence a renew deadline of 4 s and a retry period of 0.8 s.

A resource reaches Ready from stored results (no builder run: the spec is the one
test_operator.py builds; run alone, this module builds it once first), then the leader is
killed, stopped gracefully, or frozen, and the standby takes over within the bound."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kiln.api.errors import ExitCode
from tests.cluster.cluster import ClusterInfo, s3_client
from tests.cluster.install import (
    OPERATOR_NAMESPACE,
    REPO,
    downward_api,
    install,
    kubectl,
    operator_command,
    s3_secret,
)
from tests.cluster.models import TINY_PREFIX, upload_tiny
from tests.e2e.test_operator import (
    Operator,
    apply,
    conditions,
    delete_and_wait_for_collection,
    job_names,
    namespace,
    ready,
    resource,
    wait_status,
)

# Run alone, the first test builds the model once (test_operator.py's first test does it too).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]
LEASE = "kiln-operator"
LEASE_SECONDS = 6
RETRY = LEASE_SECONDS / 7.5  # what `kiln operator --lease-seconds 6` derives
# API latency and process start on a machine whose two cores the control plane shares.
MARGIN = 8.0
# A standby's clock for the lease starts when it sees the leader's last renewal (up to one
# retry after it was written), and it notices the expiry up to one retry late.
TAKEOVER_BOUND = LEASE_SECONDS + 2 * RETRY + MARGIN


@pytest.fixture(scope="module")
def manifests(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> Any:
    documents = install(cluster)
    s3_secret(cluster, OPERATOR_NAMESPACE)
    # The same model bytes as test_operator.py's when it ran first, so its results count here.
    s3 = s3_client(cluster.s3_endpoint, cluster.s3_env)
    listed = s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{TINY_PREFIX}/tiny.pt2")
    if not listed.get("KeyCount"):
        upload_tiny(cluster, tmp_path_factory.mktemp("tiny"))
    return documents


@pytest.fixture
def pair(
    cluster: ClusterInfo, manifests: Any, tmp_path: Path
) -> Iterator[tuple[Operator, Operator]]:
    """Replica `a`, the leader (started first), and replica `b` on standby."""
    replicas = []
    for identity in ("a", "b"):
        folder = tmp_path / identity
        command = operator_command(
            cluster,
            manifests,
            folder,
            "--lease-seconds",
            str(LEASE_SECONDS),
            "--resync-seconds",
            "30",
            identity=identity,
        )
        # What turns the election on is the manifests' ConfigMap, not this test.
        assert command.env["KILN_LEADER_ELECTION"] == "true"
        assert command.env["POD_NAME"] == identity
        log = tmp_path / f"{identity}.log"
        replicas.append(Operator(cluster, command.argv, command.env, log, command.liveness))
    a, b = replicas
    try:
        a.start()
        until(a, lambda: holder(cluster) == "a", 60, "replica a to hold the Lease")
        b.start()
        until(b, lambda: "is held by a" in log_of(b), 60, "replica b on standby")
        yield a, b
    finally:
        for op in (a, b):
            if op.process is not None and op.process.poll() is None:
                op.process.send_signal(signal.SIGCONT)  # a frozen one must be able to stop
            op.stop()
            print(f"--- replica {op.env['POD_NAME']} ---\n{log_of(op)[-3000:]}")


def lease(cluster: ClusterInfo) -> Any:
    api = client.CoordinationV1Api(cluster.api_client())
    return api.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)


def holder(cluster: ClusterInfo) -> str | None:
    try:
        found: str | None = lease(cluster).spec.holder_identity
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def log_of(op: Operator) -> str:
    """The log of the replica's latest start (each start appends a marker)."""
    text = op.log.read_text(errors="replace") if op.log.exists() else ""
    return text.rsplit("--- start ", 1)[-1]


def until(op: Operator, check: Callable[[], Any], timeout: float, what: str) -> float:
    """When `check` first held (time.monotonic()), polled every 0.1 s for a figure finer than
    `eventually`'s; `op` must stay alive meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op.check_alive()
        if check():
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def liveness(op: Operator) -> dict[str, Any]:
    with urllib.request.urlopen(op.liveness, timeout=5) as response:
        assert response.status == 200
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def kopf_probe(op: Operator, timeout: float = 60) -> dict[str, Any]:
    """Kopf's own liveness answer, once it serves one: a new leader's standby server stops
    just before Kopf binds the port, so a probe in between is refused or reset (the kubelet
    counts that as one failed probe of its failureThreshold)."""
    seen: dict[str, Any] = {}

    def answered() -> bool:
        try:
            answer = liveness(op)
            seen.clear()
            seen.update(answer)
        except OSError:
            return False
        return "reconcileLoops" in seen

    until(op, answered, timeout, "Kopf's liveness probe")
    return seen


def ready_model(op: Operator, ns: str) -> dict[str, Any]:
    """`model` Ready from stored results (built first if this session has none yet)."""
    apply(op, resource("model", ns))
    return wait_status(op, ns, "model", ready(), "phase Ready", timeout=900)


def test_the_lease_rbac_is_exactly_what_the_election_uses(
    cluster: ClusterInfo, manifests: Any
) -> None:
    """The API server's own RBAC evaluator, asked about the operator's ServiceAccount."""
    sa = f"system:serviceaccount:{OPERATOR_NAMESPACE}:kiln-operator"

    def can(verb: str, what: str, ns: str = OPERATOR_NAMESPACE) -> bool:
        command = [*cluster.kubectl(), "auth", "can-i", verb, what, "-n", ns, f"--as={sa}"]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        return out.stdout.strip() == "yes"

    ours = f"leases.coordination.k8s.io/{LEASE}"
    assert can("get", ours)
    assert can("update", ours)
    assert can("create", "leases.coordination.k8s.io")  # a create names no object yet
    assert not can("update", "leases.coordination.k8s.io/someone-elses")
    assert not can("delete", ours)
    assert not can("patch", ours)
    assert not can("list", "leases.coordination.k8s.io")
    assert not can("get", ours, ns="default")  # its own namespace only


def test_a_name_prefix_renames_the_lease_and_its_role_alike(
    cluster: ClusterInfo, tmp_path: Path
) -> None:
    """Two installs side by side (an overlay with a namePrefix) elect among their own replicas:
    kustomize renames the ServiceAccount the Lease is named after and the Role's resourceNames
    together."""
    relative = os.path.relpath(REPO / "manifests", tmp_path)
    overlay = {"resources": [relative], "namePrefix": "second-"}
    (tmp_path / "kustomization.yaml").write_text(json.dumps(overlay))
    rendered = kubectl(cluster, "kustomize", str(tmp_path))
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    role = next(d for d in documents if d["kind"] == "Role")
    fields = downward_api(deployment["spec"]["template"]["spec"], "pod", OPERATOR_NAMESPACE)
    assert fields["KILN_LEASE_NAME"] == "second-kiln-operator"
    assert {n for rule in role["rules"] for n in rule.get("resourceNames", [])} == {
        "second-kiln-operator"
    }


def test_a_killed_leaders_standby_takes_over_within_the_lease(
    pair: tuple[Operator, Operator],
) -> None:
    a, b = pair
    cluster = a.cluster
    assert liveness(b) == {"standby": True}  # the kubelet keeps the standby
    held = lease(cluster).spec
    assert (held.holder_identity, held.lease_duration_seconds) == ("a", LEASE_SECONDS)

    ns = namespace(a, "ha")
    before = ready_model(a, ns)
    assert kopf_probe(a)["reconcileLoops"] >= 1  # Kopf's own probe on the leader
    jobs = job_names(a, ns)
    # Only the leader reconciles: the standby never started Kopf.
    assert "status written" in log_of(a)
    assert "status written" not in log_of(b)
    assert "acquired" not in log_of(b)

    a.stop(kill=True)  # no release: as if its node went away
    killed = time.monotonic()
    last = lease(cluster).spec  # a's last renewal, as it stays until b takes over
    assert last.holder_identity == "a"
    apply(b, resource("model", ns, selection={"minSpeedup": 1000}))  # while nobody leads
    took_over = until(b, lambda: holder(cluster) == "b", TAKEOVER_BOUND + 30, "b to take over")
    after = wait_status(
        b, ns, "model", lambda s: s.get("observedGeneration") == 2, "generation 2", timeout=120
    )
    changed = time.monotonic()
    print(
        f"\nfailover after SIGKILL (lease {LEASE_SECONDS}s, retry {RETRY:.1f}s): standby holds "
        f"the Lease after {took_over - killed:.1f}s, the status shows the spec change after "
        f"{changed - killed:.1f}s"
    )
    assert took_over - killed <= TAKEOVER_BOUND
    assert changed - killed <= TAKEOVER_BOUND + 30  # Kopf starts and lists everything first

    taken = lease(cluster).spec
    # Never early: b took the Lease no sooner than a full lease after a's last renewal.
    assert (taken.acquire_time - last.renew_time).total_seconds() >= LEASE_SECONDS
    assert taken.lease_transitions == (last.lease_transitions or 0) + 1
    until(b, lambda: "took over from a, whose lease expired" in log_of(b), 10, "b's log of it")
    assert a.process is not None
    assert a.process.returncode == -signal.SIGKILL

    # The status was carried over, not rebuilt: the same measurements, re-decided.
    assert after["phase"] == "NoImprovement"
    assert "no candidate reached minSpeedup 1000x" in after["summary"]
    assert [(t["name"], t.get("cacheKey")) for t in after["targets"]] == [
        (t["name"], t.get("cacheKey")) for t in before["targets"]
    ]
    assert conditions(after)["Built"]["status"] == "True"
    assert job_names(b, ns) == jobs  # no Job started again under any name
    delete_and_wait_for_collection(b, ns, "model")


def test_a_gracefully_stopped_leader_hands_over_at_once(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    cluster = a.cluster
    ns = namespace(a, "handover")
    ready_model(a, ns)

    a.stop()  # SIGTERM, as the kubelet sends it: finish the passes, then release the Lease
    exited = time.monotonic()
    took_over = until(b, lambda: holder(cluster) == "b", TAKEOVER_BOUND, "b to take over")
    print(
        f"\nhandover after SIGTERM: the standby holds the Lease {took_over - exited:.1f}s "
        f"after the leader exited (retry {RETRY:.1f}s; without a release it would wait for "
        f"the lease, {LEASE_SECONDS}s)"
    )
    assert a.process is not None
    assert a.process.returncode == 0
    assert "released the lease kiln-system/kiln-operator" in log_of(a)
    # (b logs it just after its write, so it may come a moment after the Lease shows b)
    until(b, lambda: "took over a released lease" in log_of(b), 10, "b's log of the handover")
    # An unreleased lease could not be taken sooner than a lease after a's last renewal, at
    # most a retry before its exit.
    assert took_over - exited < LEASE_SECONDS - 2 * RETRY

    apply(b, resource("model", ns, selection={"minSpeedup": 1000}))
    status = wait_status(
        b, ns, "model", lambda s: s.get("observedGeneration") == 2, "generation 2", timeout=120
    )
    assert status["phase"] == "NoImprovement"
    delete_and_wait_for_collection(b, ns, "model")


def test_a_frozen_leader_exits_once_it_wakes_to_a_lost_lease(
    pair: tuple[Operator, Operator],
) -> None:
    """SIGSTOP: a leader paused past its lease (a long GC pause, a frozen VM, a partition).
    The standby takes over; the old leader, resumed, exits at once instead of writing on."""
    a, b = pair
    cluster = a.cluster
    assert a.process is not None
    a.process.send_signal(signal.SIGSTOP)
    until(b, lambda: holder(cluster) == "b", TAKEOVER_BOUND + 30, "b to take over")
    a.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    code = a.process.wait(timeout=30)
    print(f"\nthe resumed old leader exited {time.monotonic() - resumed:.1f}s after SIGCONT")
    assert code == ExitCode.TRANSIENT
    assert "lost the lease kiln-system/kiln-operator" in log_of(a)
    assert holder(cluster) == "b"
    assert "reconcileLoops" in kopf_probe(b)  # Kopf's probe now, not the standby's
