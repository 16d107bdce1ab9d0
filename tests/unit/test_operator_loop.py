"""The operator's pure pieces around the plan: what it keeps of watched objects, the status merge
patch, invalid specs and refused writes on the status, the loop's timing, and wake-ups."""

from __future__ import annotations

import asyncio
from typing import Any

from kiln.api.status import Condition, OptimizedModelStatus, Phase
from kiln.operator.apply import status_patch
from kiln.operator.children import (
    controller_uid,
    deployment_state,
    failed_pod_message,
    gpu_product,
    job_state,
)
from kiln.operator.config import OperatorConfig
from kiln.operator.handlers import next_delay
from kiln.operator.plan import Plan, rejected, with_apply_error
from kiln.operator.reconcile import Pass, api_error_message
from kiln.operator.wakeups import Wakeups, sleep_until_woken

NOW = "2026-11-24T00:00:00Z"
LATER = "2026-11-24T00:05:00Z"


def owned(uid: str, controller: bool = True) -> dict[str, Any]:
    return {"ownerReferences": [{"uid": uid, "controller": controller, "kind": "OptimizedModel"}]}


def test_children_are_reduced_to_what_the_plan_reads() -> None:
    job = {
        "metadata": {"name": "m-build-cpu-1", **owned("u1")},
        "status": {
            "failed": 3,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "x",
                }
            ],
        },
    }
    state = job_state(job)
    assert (state.name, state.failed, state.succeeded) == ("m-build-cpu-1", True, False)
    assert state.message == "BackoffLimitExceeded: x"
    assert controller_uid(job) == "u1"
    assert controller_uid({"metadata": owned("u2", controller=False)}) is None
    assert not job_state({"metadata": {"name": "j"}, "status": {"succeeded": 1}}).failed

    deploy: dict[str, Any] = {
        "metadata": {"name": "m-cpu", "generation": 2},
        "spec": {
            "replicas": 2,
            "template": {"metadata": {"annotations": {"kiln.dev/engine-key": "res-1"}}},
        },
        "status": {"observedGeneration": 2, "updatedReplicas": 2, "readyReplicas": 2},
    }
    assert deployment_state(deploy).ready_replicas == 2
    assert deployment_state(deploy).engine_key == "res-1"
    # A rollout in progress (or a spec the controller has not seen yet) serves nothing new.
    rolling = {**deploy, "status": {**deploy["status"], "updatedReplicas": 1}}
    assert deployment_state(rolling).ready_replicas == 0
    unseen = {**deploy, "metadata": {"name": "m-cpu", "generation": 3}}
    assert deployment_state(unseen).ready_replicas == 0

    node = {"metadata": {"labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}}}
    assert gpu_product(node, "nvidia.com/gpu.product") == "NVIDIA-L4"
    assert gpu_product({"metadata": {}}, "nvidia.com/gpu.product") is None


def test_failed_pod_message_is_the_newest_failure() -> None:
    def pod(created: str, code: int, message: str) -> dict[str, Any]:
        state = {"terminated": {"exitCode": code, "message": message, "reason": "Error"}}
        return {
            "metadata": {"creationTimestamp": created},
            "status": {"containerStatuses": [{"state": state}]},
        }

    pods = [
        pod("2026-11-24T00:00:01Z", 2, "old"),
        pod("2026-11-24T00:00:09Z", 2, '{"error":"spec.source.uri: no such object"}'),
    ]
    assert failed_pod_message(pods) == 'exit 2: {"error":"spec.source.uri: no such object"}'
    assert failed_pod_message([pod("2026-11-24T00:00:01Z", 0, "done")]) == ""


def test_status_patch_writes_only_changes_and_nulls_what_vanished() -> None:
    current = {"phase": "Building", "message": "x", "targets": [{"name": "cpu"}]}
    assert status_patch(current, dict(current)) is None
    desired = {"phase": "Ready", "targets": [{"name": "cpu"}, {"name": "NVIDIA-L4"}]}
    assert status_patch(current, desired) == {
        "phase": "Ready",
        "message": None,
        "targets": [{"name": "cpu"}, {"name": "NVIDIA-L4"}],
    }
    assert status_patch(None, {"phase": "Pending"}) == {"phase": "Pending"}


def test_rejected_spec_names_the_field_and_keeps_earlier_results() -> None:
    earlier = OptimizedModelStatus(phase=Phase.READY, observed_generation=1).to_wire()
    decided = rejected(earlier, 2, "spec.selection.batchSize: 3 is not one of [1, 8]", NOW)
    assert decided.status is not None
    assert decided.status.phase is Phase.FAILED
    assert decided.status.observed_generation == 2
    accepted = {c.type: c for c in decided.status.conditions}["Accepted"]
    assert (accepted.status, accepted.reason) == ("False", "InvalidSpec")
    assert "spec.selection.batchSize" in accepted.message
    assert ("Warning", "InvalidSpec") in {(k, r) for k, r, _ in decided.events}
    assert decided.apply == []
    # Seen again unchanged: no flip, no new Event.
    again = rejected(decided.status.to_wire(), 2, accepted.message, LATER)
    assert again.events == []
    assert again.status is not None
    assert again.status.conditions == decided.status.conditions


def test_a_refused_write_degrades_the_status_with_the_servers_message() -> None:
    before = OptimizedModelStatus(
        phase=Phase.BUILDING,
        conditions=[
            Condition(type="Degraded", status="False", reason="AsExpected", message="no problems")
        ],
    )
    decided = Plan(status=before.model_copy(update={"observed_generation": 4}))
    out = with_apply_error(decided, before, "403 Forbidden: jobs is forbidden", NOW)
    assert out.status is not None
    degraded = {c.type: c for c in out.status.conditions}["Degraded"]
    assert (degraded.status, degraded.reason) == ("True", "ApplyFailed")
    assert degraded.observed_generation == 4
    assert out.events == [
        ("Warning", "ApplyFailed", "Degraded=True: 403 Forbidden: jobs is forbidden")
    ]

    class RefusedError(Exception):
        status = 403
        reason = "Forbidden"
        body = '{"message": "jobs.batch is forbidden: User cannot create"}'

    assert (
        api_error_message(RefusedError())
        == "403 Forbidden: jobs.batch is forbidden: User cannot create"
    )
    assert api_error_message(ValueError("boom")) == "ValueError: boom"


def test_loop_timing_backs_off_polls_in_flight_and_resyncs_with_jitter() -> None:
    config = OperatorConfig(requeue_seconds=10, resync_seconds=60)
    assert next_delay(None, 1, config) == 10
    assert next_delay(Pass(status=None, error="403"), 3, config) == 40
    assert next_delay(None, 20, config) == 300  # capped
    assert next_delay(Pass(status=None, requeue_after=10), 0, config) == 10
    settled = [next_delay(Pass(status=None), 0, config) for _ in range(50)]
    assert all(48 <= d <= 72 for d in settled)
    assert len(set(settled)) > 1


def test_wakeups_reach_only_registered_loops_and_are_not_lost() -> None:
    async def scenario() -> None:
        wakeups = Wakeups()
        a, b = wakeups.register("a"), wakeups.register("b")
        wakeups.poke("a")
        wakeups.poke("unknown")  # a child of a resource that has no loop (yet): ignored
        wakeups.poke(None)
        assert await sleep_until_woken(a, 5) is True
        assert await sleep_until_woken(b, 0.01) is False
        # A poke during a pass (before the loop sleeps) wakes the next sleep at once.
        wakeups.poke_all()
        assert await sleep_until_woken(b, 5) is True
        assert await sleep_until_woken(a, 5) is True
        assert await sleep_until_woken(a, 0.01) is False  # cleared after waking
        wakeups.unregister("a")
        assert len(wakeups) == 1

    asyncio.run(scenario())
