"""Leader election (kiln.operator.leader): the pure decision over every case, the leader's
renew deadline under a real fault (an API server that cannot be reached), the standby's
liveness answer on a real socket, and the manifests that grant and configure it.
tests/e2e/test_operator_ha.py runs two replicas against a real API server."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kiln.operator.leader import (
    Decision,
    LeaderElection,
    LeaseAction,
    LeaseElector,
    LeaseRecord,
    decide,
    default_identity,
    expires_at,
    lease_body,
    overdue,
    record_of,
    released,
    retry_pause,
    standby_liveness,
)
from tests.conftest import free_port

MANIFESTS = Path(__file__).parents[2] / "manifests" / "operator"
NOW = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
LEASE = 15


def held(holder: str, renewed: datetime, seconds: int = LEASE, transitions: int = 2) -> LeaseRecord:
    return LeaseRecord(holder, seconds, renewed - timedelta(minutes=5), renewed, transitions, "41")


# -- the decision ------------------------------------------------------------------------------


def test_an_absent_lease_is_created_with_us_holding_it() -> None:
    assert decide(None, "a", NOW, LEASE) == Decision(
        LeaseAction.CREATE, LeaseRecord("a", LEASE, NOW, NOW, 0)
    )


def test_our_own_lease_is_renewed_at_once_even_long_expired() -> None:
    # A container restarted in the same pod: no wait for its own lease to run out.
    ours = held("a", NOW - timedelta(hours=1))
    decision = decide(ours, "a", NOW, LEASE, observed_at=NOW)
    assert decision.action is LeaseAction.RENEW
    assert decision.record == replace(ours, renew_time=NOW)
    assert decision.record is not None
    assert decision.record.resource_version == "41"  # written back: optimistic concurrency
    assert decision.record.acquire_time == ours.acquire_time  # still the same term
    assert decision.record.transitions == 2  # no change of holder


def test_another_holders_unexpired_lease_means_wait() -> None:
    lease = held("b", NOW - timedelta(seconds=3))
    assert decide(lease, "a", NOW, LEASE, observed_at=NOW - timedelta(seconds=3)) == Decision(
        LeaseAction.WAIT, None
    )


def test_another_holders_expired_lease_is_taken_over() -> None:
    lease = held("b", NOW - timedelta(seconds=20))
    decision = decide(lease, "a", NOW, LEASE, observed_at=NOW - timedelta(seconds=20))
    assert decision.action is LeaseAction.TAKE_OVER
    assert decision.record == LeaseRecord("a", LEASE, NOW, NOW, 3)  # one more transition
    assert decision.record.resource_version == "41"  # of two racing replicas, one wins


def test_a_released_lease_is_taken_over_at_once() -> None:
    lease = released(held("b", NOW - timedelta(seconds=1)), NOW)
    assert (lease.holder, lease.lease_seconds, lease.transitions) == ("", 1, 2)
    decision = decide(lease, "a", NOW, LEASE, observed_at=NOW)
    assert decision.action is LeaseAction.TAKE_OVER
    assert decision.record is not None
    assert decision.record.holder == "a"


def test_the_lease_runs_out_exactly_at_its_duration() -> None:
    seen = NOW - timedelta(seconds=LEASE)
    lease = held("b", seen)
    assert decide(lease, "a", NOW, LEASE, observed_at=seen).action is LeaseAction.TAKE_OVER
    just_before = NOW - timedelta(microseconds=1)
    assert decide(lease, "a", just_before, LEASE, observed_at=seen).action is LeaseAction.WAIT


def test_the_holders_clock_does_not_shorten_or_stretch_a_lease() -> None:
    # Expiry counts from when this replica saw the record, on its own clock: a holder whose
    # clock runs an hour ahead neither keeps the lease for an hour more...
    ahead = held("b", NOW + timedelta(hours=1))
    seen = NOW - timedelta(seconds=LEASE + 1)
    assert decide(ahead, "a", NOW, LEASE, observed_at=seen).action is LeaseAction.TAKE_OVER
    # ...nor does one whose clock lags lose a lease it renewed a moment ago.
    behind = held("b", NOW - timedelta(hours=1))
    assert decide(behind, "a", NOW, LEASE, observed_at=NOW).action is LeaseAction.WAIT
    # With nothing observed yet, the record's renewTime is all there is.
    assert expires_at(behind) == NOW - timedelta(hours=1) + timedelta(seconds=LEASE)


def test_the_holders_lease_duration_counts_not_ours() -> None:
    long = held("b", NOW, seconds=60)
    seen = NOW - timedelta(seconds=30)
    assert decide(long, "a", NOW, LEASE, observed_at=seen).action is LeaseAction.WAIT


def test_a_lease_without_times_or_duration_is_expired() -> None:
    bare = LeaseRecord("b", 0, None, None, 0)
    assert decide(bare, "a", NOW, LEASE).action is LeaseAction.TAKE_OVER


# -- what is written and read ------------------------------------------------------------------


def test_the_lease_body_holds_micro_times_and_the_resource_version() -> None:
    settings = LeaderElection("kiln-system", identity="a")
    body = lease_body(settings, LeaseRecord("a", LEASE, NOW, NOW, 0, "41"))
    assert body["metadata"] == {
        "name": "kiln-operator",
        "namespace": "kiln-system",
        "resourceVersion": "41",
    }
    assert body["spec"]["renewTime"] == "2025-01-02T03:04:05.678901Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", body["spec"]["acquireTime"])
    created = lease_body(settings, LeaseRecord("a", LEASE, NOW, NOW, 0))
    assert "resourceVersion" not in created["metadata"]  # a create has none to check


def test_a_read_lease_becomes_the_record_it_was_written_from() -> None:
    record = LeaseRecord("a", LEASE, NOW, NOW, 4, "77")
    settings = LeaderElection("kiln-system", identity="a")
    # The client's own parsing of the JSON the API server returns.
    body = {**lease_body(settings, record), "metadata": {"resourceVersion": "77"}}
    lease = client.ApiClient().deserialize(json.dumps(body), "V1Lease", "application/json")
    assert record_of(lease) == record
    assert record_of(lease).resource_version == "77"
    bare = {"metadata": {}, "spec": {"holderIdentity": ""}}
    lease = client.ApiClient().deserialize(json.dumps(bare), "V1Lease", "application/json")
    assert record_of(lease) == LeaseRecord("", 0, None, None, 0)


# -- settings ----------------------------------------------------------------------------------


def test_timings_keep_client_gos_proportions() -> None:
    default = LeaderElection.scaled("kiln-system", "kiln-operator", "a", 15)
    assert default == LeaderElection("kiln-system", identity="a")
    assert (default.renew_deadline_seconds, default.retry_seconds) == (10.0, 2.0)
    short = LeaderElection.scaled("kiln-system", "kiln-operator", "a", 6)
    assert (short.renew_deadline_seconds, short.retry_seconds) == (4.0, 0.8)


@pytest.mark.parametrize(
    ("deadline", "retry"), [(15.0, 2.0), (20.0, 2.0), (10.0, 10.0), (10.0, 0.0)]
)
def test_a_renew_deadline_not_under_the_lease_is_refused(deadline: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry < renew deadline < lease"):
        LeaderElection(
            "kiln-system", identity="a", renew_deadline_seconds=deadline, retry_seconds=retry
        )


def test_the_identity_is_the_pods_name_else_host_and_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("POD_NAME", "kiln-operator-7d9f-x2")
    assert default_identity() == "kiln-operator-7d9f-x2"
    assert LeaderElection("kiln-system").identity == "kiln-operator-7d9f-x2"
    monkeypatch.delenv("POD_NAME")
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}-\d+", default_identity())
    with pytest.raises(ValueError, match="identity"):
        LeaderElection("kiln-system", identity="")


# -- the renew deadline, under a real fault ----------------------------------------------------


def test_overdue_is_strictly_past_the_deadline() -> None:
    assert not overdue(100.0, 110.0, 10.0)
    assert overdue(100.0, 110.001, 10.0)


@pytest.mark.parametrize(
    ("step", "renewed", "pause"),
    [
        (0.1, True, 2.0),  # renewed: a whole retry period
        (4.0, True, 2.0),  # however long the renewal took
        (0.1, False, 1.9),  # failed: the rest of the period since the try began
        (5.0, False, 0.0),  # a try that hung until its timeout: the next one at once
    ],
)
def test_a_failed_renewal_is_tried_again_a_retry_period_after_it_began(
    step: float, renewed: bool, pause: float
) -> None:
    assert retry_pause(2.0, step, renewed) == pytest.approx(pause)


def unreachable_api() -> Any:
    """A real client for an API server that is not there: every call fails at once."""
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens
    return client.CoordinationV1Api(client.ApiClient(configuration))


def test_a_leader_that_cannot_renew_gives_up_at_its_deadline() -> None:
    settings = LeaderElection(
        "kiln-system", identity="a", lease_seconds=2, renew_deadline_seconds=0.6, retry_seconds=0.1
    )
    lost: list[tuple[float, str]] = []
    done = threading.Event()

    def on_lost(reason: str) -> None:
        lost.append((time.monotonic(), reason))
        done.set()

    started = time.monotonic()
    elector = LeaseElector(unreachable_api(), settings, on_lost=on_lost)
    elector.start_renewing()
    assert done.wait(10), "the renew deadline passed unnoticed"
    ((when, reason),) = lost  # once, though two threads watch
    assert "not renewed for" in reason
    assert "renew deadline 0.6s" in reason
    assert 0.6 <= when - started < settings.lease_seconds  # gone before a standby may take over
    elector.release()  # a lost lease is not released: there is nothing of ours to write
    time.sleep(0.3)
    assert len(lost) == 1


def test_a_release_that_cannot_reach_the_api_server_does_not_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = LeaderElection("kiln-system", identity="a")
    LeaseElector(unreachable_api(), settings, on_lost=lambda _: None).release()
    assert "could not release the lease kiln-system/kiln-operator" in caplog.text
    assert "takes over once it expires, within 15s" in caplog.text


def test_a_failed_step_is_transient() -> None:
    settings = LeaderElection("kiln-system", identity="a")
    assert LeaseElector(unreachable_api(), settings).step() is None


# -- the standby's liveness answer -------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_the_standby_answers_the_liveness_url_and_frees_its_port() -> None:
    port = free_port()
    with standby_liveness(f"http://127.0.0.1:{port}/healthz"):
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, json.loads(body)) == (200, {"standby": True})
        assert get(f"http://127.0.0.1:{port}/other")[0] == 404
    # Kopf binds the same port next (aiohttp sets SO_REUSEADDR, as here).
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


# -- the manifests -----------------------------------------------------------------------------


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_role_grants_exactly_what_the_elector_calls() -> None:
    role, binding = documents(MANIFESTS / "leader-election.yaml")
    assert role["kind"] == "Role"  # in the operator's namespace only
    grants = {
        (verb, name)
        for rule in role["rules"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames", ["*"])
        if rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
    }
    lease = LeaderElection("kiln-system", identity="a").name
    assert grants == {("get", lease), ("update", lease), ("create", "*")}
    assert len(role["rules"]) == 2  # nothing else
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kiln-operator", "namespace": "kiln-system"}
    ]
    (kustomization,) = documents(MANIFESTS / "kustomization.yaml")
    assert "leader-election.yaml" in kustomization["resources"]


def test_the_deployment_runs_two_replicas_that_elect_a_leader() -> None:
    (deploy,) = documents(MANIFESTS / "deployment.yaml")
    assert deploy["spec"]["replicas"] == 2
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    fields = {
        e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
        for e in container["env"]
        if "fieldRef" in e.get("valueFrom", {})
    }
    assert fields == {
        "POD_NAME": "metadata.name",  # the identity
        "POD_NAMESPACE": "metadata.namespace",  # where the Lease is
        "KILN_LEASE_NAME": "spec.serviceAccountName",  # one Lease per install
    }
    (config,) = documents(MANIFESTS / "config.yaml")
    assert config["data"]["KILN_LEADER_ELECTION"] == "true"
    role, _ = documents(MANIFESTS / "leader-election.yaml")
    account = deploy["spec"]["template"]["spec"]["serviceAccountName"]
    assert {n for rule in role["rules"] for n in rule.get("resourceNames", [])} == {account}
