"""The leader's renewal against a real API server (the local cluster): one request per renewal
while the Lease is as this replica wrote it, and a read first whenever someone else wrote it
since. The calls are counted by a wrapper that passes every one of them on unchanged."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from kubernetes import client

from kiln.operator.leader import Decision, LeaderElection, LeaseAction, LeaseElector
from tests.cluster.cluster import ClusterInfo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class Counted:
    """The real CoordinationV1Api, with a count of the Lease calls made through it."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.api, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name.split("_")[0]] += 1  # read, create, replace
            return method(*args, **kwargs)

        return counted

    def taken(self) -> Counter[str]:
        calls, self.calls = self.calls, Counter()
        return calls


def action(decision: Decision | None) -> LeaseAction | None:
    return None if decision is None else decision.action


def test_a_leader_renews_in_one_request_and_reads_only_after_another_write(
    cluster: ClusterInfo,
) -> None:
    api = client.CoordinationV1Api(cluster.api_client())
    name, namespace = f"lease-{uuid.uuid4().hex[:6]}", "default"
    counted = Counted(api)
    settings = LeaderElection(namespace, name, "a", 15, 10.0, 2.0)
    elector = LeaseElector(counted, settings, on_lost=lambda _: None)

    assert action(elector.step()) is LeaseAction.CREATE
    assert counted.taken() == {"read": 1, "create": 1}
    renewals = [elector.step(renewing=True) for _ in range(3)]
    assert [action(d) for d in renewals] == [LeaseAction.RENEW] * 3
    assert counted.taken() == {"replace": 3}  # no read while the Lease is as we wrote it
    stored = api.read_namespaced_lease(name, namespace).spec
    assert stored.holder_identity == "a"
    assert stored.renew_time == renewals[-1].record.renew_time  # type: ignore[union-attr]

    # Someone else writes the Lease (a label: same holder, a new resourceVersion).
    api.patch_namespaced_lease(name, namespace, {"metadata": {"labels": {"touched": "yes"}}})
    assert action(elector.step(renewing=True)) is LeaseAction.RENEW
    assert counted.taken() == {"replace": 2, "read": 1}  # the conflict, the read, the renewal
    assert action(elector.step(renewing=True)) is LeaseAction.RENEW
    assert counted.taken() == {"replace": 1}  # back to one request

    # Another replica takes the Lease: the leader finds out in the same step and writes nothing.
    lease = api.read_namespaced_lease(name, namespace)
    lease.spec.holder_identity = "b"
    api.replace_namespaced_lease(name, namespace, lease)
    assert action(elector.step(renewing=True)) is LeaseAction.WAIT
    assert counted.taken() == {"replace": 1, "read": 1}
    assert api.read_namespaced_lease(name, namespace).spec.holder_identity == "b"
    api.delete_namespaced_lease(name, namespace)
