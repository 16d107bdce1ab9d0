"""The operator's pure pieces around the plan: what it keeps of watched objects, the status merge
patch, invalid specs and refused writes on the status, the loop's timing, and wake-ups; and the
wiring around them: the context Kopf hands every handler, and the wake-ups its indexes carry."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.actions.loggers import TerseObjectLogger
from kopf._core.engines import indexing
from typer.testing import CliRunner

from kiln.api.status import Condition, OptimizedModelStatus, Phase
from kiln.operator import handlers, startup
from kiln.operator.apply import status_patch
from kiln.operator.children import (
    controller_uid,
    deployment_state,
    failed_pod,
    gpu_product,
    job_state,
)
from kiln.operator.config import OperatorConfig
from kiln.operator.handlers import OperatorContext, gpu_types_after, next_delay
from kiln.operator.observed import JobState
from kiln.operator.plan import Plan, rejected, with_apply_error
from kiln.operator.reconcile import Pass, api_error_message
from kiln.operator.wakeups import LastSeen, Wakeups, sleep_until_woken

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
    assert (state.name, state.failed) == ("m-build-cpu-1", True)
    assert state.message == "BackoffLimitExceeded: x"
    assert controller_uid(job) == "u1"
    assert controller_uid({"metadata": owned("u2", controller=False)}) is None
    assert not job_state({"metadata": {"name": "j"}, "status": {"succeeded": 1}}).failed
    running = job_state({"metadata": {"name": "j"}, "status": {"active": 1, "failed": 2}})
    assert (running.failed, running.pod_failures, running.retrying) == (False, 2, True)
    assert not state.retrying  # a failed Job is done retrying

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
    job = JobState("j", failed=True)
    assert failed_pod(job, pods).message == 'exit 2: {"error":"spec.source.uri: no such object"}'
    assert failed_pod(job, [pod("2026-11-24T00:00:01Z", 0, "done")]).message == ""


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


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: secret-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.fixture
def context(tmp_path: Path) -> Iterator[OperatorContext]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    built = startup.build_context(OperatorConfig(workers=3), kubeconfig)
    yield built
    built.executor.shutdown()


def kopf_call(handler: object, **kwargs: Any) -> Any:
    """Call a handler by keyword, as Kopf does. (Kopf's decorators type a handler as its
    callback protocol, which names every keyword Kopf passes.)"""
    assert callable(handler)
    return handler(**kwargs)


def body(raw: Any) -> kopf.Body:
    return kopf.Body(raw)


def job(owner: str, name: str = "m-build-cpu-1") -> kopf.Body:
    labels = {"kiln.dev/component": "builder", "app.kubernetes.io/managed-by": "kiln"}
    metadata = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": labels}
    return body({"metadata": {**metadata, **owned(owner)}, "status": {}})


def node(name: str, product: str | None) -> kopf.Body:
    labels = {"nvidia.com/gpu.product": product} if product else {}
    return body({"metadata": {"name": name, "uid": f"uid-{name}", "labels": labels}})


def resource_at(generation: int, observed: int) -> kopf.Body:
    status = {"observedGeneration": observed}
    return body({"metadata": {"generation": generation}, "status": status})


def test_one_context_is_built_and_every_handler_reads_it_from_the_memo(
    context: OperatorContext,
) -> None:
    assert context.config.workers == 3
    assert context.deps.config is context.config
    assert context.executor._max_workers == 3
    # One API connection per reconcile thread, and a spare or two.
    assert context.deps.clients.core.api_client.configuration.connection_pool_maxsize == 5
    memo = context.memo()
    # Kopf gives each object a shallow copy of the memo: the same context, never a new one.
    assert OperatorContext.of(copy.copy(memo)) is context
    info = kopf_call(handlers._login, settings=kopf.OperatorSettings(), memo=memo)
    assert (info.server, info.token) == ("https://127.0.0.1:6443", "secret-token")
    context.wakeups.register("a")
    assert asyncio.run(kopf_call(handlers._loops, memo=memo)) == 1
    with pytest.raises(TypeError, match="without the operator's context"):
        OperatorContext.of(kopf.Memo())


def test_run_hands_kopf_the_context_and_stops_the_workers_after(
    context: OperatorContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "configure", lambda **kwargs: None)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: calls.update(kwargs))
    startup.run(context, ["a", "b"], "http://0.0.0.0:8081/healthz")
    assert OperatorContext.of(calls["memo"]) is context
    assert (calls["clusterwide"], calls["namespaces"]) == (False, ["a", "b"])
    assert context.executor._shutdown


def test_the_command_leaves_the_defaults_to_the_operator_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kiln.cli.main import app

    got: dict[str, Any] = {}
    monkeypatch.setattr(startup, "build_context", lambda config, kubeconfig: config)
    monkeypatch.setattr(startup, "run", lambda config, namespaces, *_: got.update(c=config))
    for var in ("BUILDER_IMAGE", "SERVER_IMAGE", "GPU_LABEL", "RESYNC_SECONDS", "WORKERS"):
        monkeypatch.delenv(f"KILN_{var}", raising=False)
    result = CliRunner().invoke(app, ["operator"])
    assert result.exit_code == 0, result.output
    assert got["c"] == OperatorConfig()
    result = CliRunner().invoke(app, ["operator", "--workers", "3", "--gpu-label", "gpu"])
    assert result.exit_code == 0, result.output
    assert got["c"] == OperatorConfig(workers=3, gpu_label="gpu")


def test_gpu_types_after_a_node_event_keep_a_type_while_any_node_carries_it() -> None:
    nodes = {"L4": ["n1", "n2"], "T4": ["n3"]}
    assert gpu_types_after(nodes, "n4", None) == {"L4", "T4"}  # a CPU node: nothing changes
    assert gpu_types_after(nodes, "n4", "A100") == {"A100", "L4", "T4"}
    assert gpu_types_after(nodes, "n1", None) == {"L4", "T4"}  # n2 still carries L4
    assert gpu_types_after(nodes, "n3", None) == {"L4"}  # T4's last node lost its label
    assert gpu_types_after(nodes, "n3", "A100") == {"A100", "L4"}  # ... or changed it
    assert gpu_types_after(nodes, "n3", "T4") == {"L4", "T4"}  # a heartbeat
    last = LastSeen(frozenset({"L4"}))
    assert not last.update(frozenset({"L4"}))
    assert last.update(frozenset({"L4", "T4"}))
    assert not last.update(frozenset({"L4", "T4"}))


def test_watch_events_wake_exactly_the_loops_they_concern(context: OperatorContext) -> None:
    memo = context.memo()

    async def index(handler: object, **kwargs: Any) -> Any:
        return await kopf_call(handler, memo=memo, **kwargs)

    async def scenario() -> None:
        a, b = context.wakeups.register("a"), context.wakeups.register("b")
        # A Job or Deployment event wakes its owner only; an orphan wakes nobody.
        assert await index(handlers.builder_jobs, body=job("a")) == {"a": job_state(job("a"))}
        assert (a.is_set(), b.is_set()) == (True, False)
        a.clear()
        orphan = body({"metadata": {"name": "x", "labels": {}}})
        assert await index(handlers.server_deployments, body=orphan) == {}
        await index(handlers._child_deleted, body=job("b"))
        assert (a.is_set(), b.is_set()) == (False, True)
        b.clear()

        # A spec change wakes its loop; the status the loop writes does not.
        await index(handlers.spec_changes, body=resource_at(2, 1), uid="a")
        assert a.is_set()
        a.clear()
        await index(handlers.spec_changes, body=resource_at(2, 2), uid="a")
        assert not a.is_set()

        # Only a change of the set of GPU types wakes every loop.
        gpu = await index(handlers.gpu_nodes, body=node("n1", "L4"), name="n1", gpu_nodes={})
        assert gpu == {"L4": "n1"}
        assert (a.is_set(), b.is_set()) == (True, True)
        a.clear()
        b.clear()
        nodes = {"L4": ["n1"]}
        await index(handlers.gpu_nodes, body=node("n1", "L4"), name="n1", gpu_nodes=nodes)
        await index(handlers.gpu_nodes, body=node("n2", "L4"), name="n2", gpu_nodes=nodes)
        # {} and not None: for None, Kopf would keep the node's earlier entry.
        cpu = await index(handlers.gpu_nodes, body=node("c1", None), name="c1", gpu_nodes=nodes)
        assert cpu == {}
        assert (a.is_set(), b.is_set()) == (False, False)
        await index(handlers._node_deleted, gpu_nodes={})  # L4's last node is gone
        assert (a.is_set(), b.is_set()) == (True, True)

    asyncio.run(scenario())


def test_a_poke_from_an_index_reaches_a_loop_after_the_store_and_logs_nothing(
    context: OperatorContext, caplog: pytest.LogCaptureFixture
) -> None:
    """The indexing function pokes before Kopf stores its result; the woken loop must still read
    the new entry. And Kopf logs an indexing function's success only below INFO (verbose mode),
    which is why the wake-ups ride on them. Runs Kopf's own indexing step, so a Kopf release
    that changes either fails here."""
    registry = kopf.get_default_registry()
    settings = kopf.OperatorSettings()
    indexers = indexing.OperatorIndexers()
    indexers.ensure(registry._indexing.get_all_handlers())
    resource = kopf.Resource("batch", "v1", "jobs", kind="Job", namespaced=True)
    child = job("a")
    event: Any = {"type": "MODIFIED", "object": dict(child)}
    memo: Any = context.memo()

    async def scenario() -> list[str]:
        wake = context.wakeups.register("a")
        seen: list[str] = []

        async def loop() -> None:
            await wake.wait()
            seen.extend(j.name for j in indexers.indices["builder_jobs"].get("a", []))

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the loop is asleep
        await indexing.index_resource(
            indexers=indexers,
            registry=registry,
            settings=settings,
            resource=resource,
            raw_event=event,
            memory=indexing.IndexingMemory(),
            logger=TerseObjectLogger(body=child, settings=settings),
            memo=memo,
            body=child,
        )
        await asyncio.wait_for(task, 5)
        return seen

    caplog.set_level(logging.INFO)
    assert asyncio.run(scenario()) == ["m-build-cpu-1"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("kopf")] == []
    caplog.set_level(logging.DEBUG)  # what `kopf run --verbose` would show
    asyncio.run(scenario())
    assert "Indexer 'builder_jobs' succeeded." in caplog.messages
