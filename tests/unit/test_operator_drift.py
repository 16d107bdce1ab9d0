"""Idle passes are free: which desired children a pass writes (kiln.operator.drift), and the
source identity read at most once per window (StoredResults.fingerprint)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kiln.operator import names
from kiln.operator.children import deployment_state, job_state, service_state
from kiln.operator.drift import (
    digest,
    foreign_fields,
    manifest_fields,
    needs_write,
    overlaps,
    stamped,
    writes,
)
from kiln.operator.observe import StoredResults
from kiln.operator.observed import Applied, DeploymentState, JobState
from kiln.operator.plan import plan, request_keys
from kiln.storage.objects import Location, Storage
from tests.unit.test_operator_plan import CONFIG, model, observed, result

# managedFields as a 1.34 API server writes them for a Deployment Kiln applied, once the
# Deployment controller has set its revision annotation and status.
CONTROLLER_ENTRIES = [
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {
            "f:metadata": {"f:annotations": {".": {}, "f:deployment.kubernetes.io/revision": {}}}
        },
    },
    {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "subresource": "status",
        "fieldsV1": {"f:status": {"f:readyReplicas": {}, "f:conditions": {".": {}}}},
    },
]
KILN_ENTRY = {
    "manager": names.FIELD_MANAGER,
    "operation": "Apply",
    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}},
}
KUBECTL_SCALE = {
    "manager": "kubectl",
    "operation": "Update",
    "subresource": "scale",
    "fieldsV1": {"f:spec": {"f:replicas": {}}},
}
KUBECTL_EDIT_IMAGE = {
    "manager": "kubectl-edit",
    "operation": "Update",
    "fieldsV1": {
        "f:spec": {
            "f:template": {"f:spec": {"f:containers": {'k:{"name":"server"}': {"f:image": {}}}}}
        }
    },
}


def settled() -> tuple[Any, list[dict[str, Any]]]:
    """A resource whose targets all have stored results, and the children its plan renders."""
    _, keys = request_keys(observed(export_done=True), CONFIG)
    results = {k: result(t, f"r-{t}") for t, k in keys.items()}
    seen = observed(export_done=True, results=results)
    return seen, plan(seen, CONFIG).apply


def cached(seen: Any, children: list[dict[str, Any]], entries: Sequence[Any] = ()) -> Any:
    """`seen` with the cache holding `children` as the API server serves them after Kiln's
    apply (its annotation, the given managedFields), read by the same functions the
    operator's indexes use."""
    deployments, services = {}, {}
    for manifest in children:
        body = copy.deepcopy(stamped(manifest))
        body["metadata"]["managedFields"] = [KILN_ENTRY, *entries]
        if manifest["kind"] == "Deployment":
            state = deployment_state(body)
            deployments[state.name] = state
        elif manifest["kind"] == "Service":
            service = service_state(body)
            services[service.name] = service.applied
    return type(seen)(**{**seen.__dict__, "deployments": deployments, "services": services})


def test_a_settled_resource_writes_nothing() -> None:
    seen, children = settled()
    assert {m["kind"] for m in children} == {"Deployment", "Service"}
    assert len(writes(children, [], seen)) == len(children)  # nothing cached: every child
    assert len(writes(children, [], cached(seen, children, CONTROLLER_ENTRIES))) == 0


def test_a_changed_rendering_writes_only_that_child() -> None:
    seen, children = settled()
    now = cached(seen, children)
    bigger = copy.deepcopy(children)
    deploy = next(m for m in bigger if m["kind"] == "Deployment")
    deploy["spec"]["replicas"] = 3
    sent = writes(bigger, [], now).apply
    assert [(m["kind"], m["metadata"]["name"]) for m in sent] == [
        ("Deployment", deploy["metadata"]["name"])
    ]
    assert sent[0]["metadata"]["annotations"][names.APPLIED_ANNOTATION] == digest(deploy)


def test_a_hand_edit_of_a_kiln_field_is_drift_and_others_are_not() -> None:
    seen, children = settled()
    deployments = [m["metadata"]["name"] for m in children if m["kind"] == "Deployment"]
    for entry in (KUBECTL_SCALE, KUBECTL_EDIT_IMAGE):
        drifted = cached(seen, children, [*CONTROLLER_ENTRIES, entry])  # on every child
        sent = writes(children, [], drifted).apply
        assert [m["metadata"]["name"] for m in sent] == deployments  # Services: no such field
    # An annotation of someone else's, on fields Kiln never sets: no write.
    annotate = {
        "manager": "kubectl-annotate",
        "operation": "Update",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:team": {}}}},
    }
    assert len(writes(children, [], cached(seen, children, [annotate]))) == 0
    # A hand-deleted child is not in the cache: written again.
    seen_all = cached(seen, children)
    gone = next(m["metadata"]["name"] for m in children if m["kind"] == "Service")
    left = {k: v for k, v in seen_all.services.items() if k != gone}
    without = type(seen)(**{**seen_all.__dict__, "services": left})
    assert [m["metadata"]["name"] for m in writes(children, [], without).apply] == [gone]


def test_field_paths_and_their_overlap() -> None:
    assert foreign_fields([KILN_ENTRY, *CONTROLLER_ENTRIES]) == {
        ("metadata", "annotations", "deployment.kubernetes.io/revision")
    }
    assert foreign_fields([KUBECTL_EDIT_IMAGE]) == {("spec", "template", "spec", "containers")}
    ours = frozenset(manifest_fields({"spec": {"replicas": 1, "template": {"spec": {}}}}))
    assert ours == {("spec", "replicas"), ("spec", "template", "spec")}
    assert overlaps(ours, frozenset({("spec", "replicas")}))
    assert overlaps(ours, frozenset({("spec", "template", "spec", "containers")}))  # inside
    assert overlaps(ours, frozenset({("spec",)}))  # holds one of ours
    assert not overlaps(ours, frozenset({("spec", "paused")}))
    assert not overlaps(ours, frozenset())
    fresh = stamped({"kind": "Service", "metadata": {"name": "s"}, "spec": {"a": 1}})
    assert needs_write(fresh, None)
    assert needs_write(fresh, Applied("other"))
    assert not needs_write(fresh, Applied(digest(fresh)))


def test_a_job_and_its_request_configmap_are_written_together() -> None:
    seen = observed()  # nothing exported yet: the export Job and its request ConfigMap
    children = plan(seen, CONFIG).apply
    assert [m["kind"] for m in children] == ["ConfigMap", "Job"]
    assert [m["kind"] for m in writes(children, [], seen).apply] == ["ConfigMap", "Job"]
    job = copy.deepcopy(stamped(children[1]))
    state = job_state(job)
    assert state.applied.digest == job["metadata"]["annotations"][names.APPLIED_ANNOTATION]
    running = type(seen)(**{**seen.__dict__, "jobs": {state.name: state}})
    assert len(writes(children, [], running)) == 0  # the Job is current: its ConfigMap too


def test_scale_to_zero_only_once() -> None:
    seen = observed(deployments={"d": DeploymentState("d", replicas=2)})
    assert writes([], ["d", "gone"], seen).scale_to_zero == ["d"]
    zero = observed(deployments={"d": DeploymentState("d", replicas=0)})
    assert writes([], ["d"], zero).scale_to_zero == []
    assert JobState("j").applied == Applied()


class Counting(Storage):
    """The real local storage, counting the identity reads the operator makes."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def identity(self, loc: Location) -> str:
        self.reads += 1
        return super().identity(loc)

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        self.reads += 1
        return super().listing(prefix)


def test_a_source_identity_is_read_once_per_window_for_every_resource(tmp_path: Path) -> None:
    (tmp_path / "model.pt2").write_bytes(b"weights")
    (tmp_path / "calib").mkdir()
    np.savez(tmp_path / "calib" / "0.npz", image=np.zeros((1, 3, 8, 8), np.float32))
    spec = {"source": {"uri": (tmp_path / "model.pt2").as_uri()}}
    spec["calibration"] = {"uri": (tmp_path / "calib").as_uri()}
    m = model(**spec)
    clock = [0.0]
    storage = Counting()
    stored = StoredResults(storage, clock=lambda: clock[0])
    first = stored.fingerprint(m, 60)
    assert storage.reads == 2  # one HEAD of the source, one listing of the calibration set
    for _ in range(200):  # 200 resources with this source, within the window: no read
        assert stored.fingerprint(m, 60) == first
    assert storage.reads == 2
    (tmp_path / "model.pt2").write_bytes(b"new weights, same URI")
    clock[0] = 61.0
    assert stored.fingerprint(m, 60) != first  # noticed once the window has passed
    assert storage.reads == 4
    stored.fingerprint(m, 0)  # 0: read on every pass
    assert storage.reads == 6
