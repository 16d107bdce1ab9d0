from __future__ import annotations

from typing import Any

from kiln.api.load import parse_document
from kiln.api.spec import Backend, OptimizedModel, Precision
from kiln.api.status import (
    AccuracyResult,
    BatchBenchmark,
    CandidateStatus,
    Condition,
    Latency,
    OptimizedModelStatus,
    Phase,
    State,
    TargetStatus,
)
from kiln.operator import names
from kiln.operator.conditions import flips, set_condition
from kiln.operator.config import OperatorConfig
from kiln.operator.observed import DeploymentState, JobState, Observed
from kiln.operator.plan import plan, request_keys
from kiln.operator.targets import TargetIntent, desired_targets

CONFIG = OperatorConfig(builder_image="kiln:test", server_image="kiln:test", requeue_seconds=5)
NOW = "2026-11-24T00:00:00Z"


def model(**spec: Any) -> OptimizedModel:
    body: dict[str, Any] = {
        "source": {"uri": "s3://models/lipsync.pt2"},
        "inputs": [{"name": "image", "shape": [-1, 3, 8, 8]}],
        "outputs": ["out"],
        "calibration": {"uri": "s3://models/calib"},
        "artifacts": {"uri": "s3://kiln/artifacts", "credentialsSecret": "s3"},
    }
    body.update(spec)
    doc = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "lipsync", "namespace": "ml", "uid": "u-1", "generation": 3},
        "spec": body,
    }
    return parse_document(doc, "test")


def observed(m: OptimizedModel | None = None, **kw: Any) -> Observed:
    base: dict[str, Any] = {
        "model": m or model(),
        "status": None,
        "gpu_types": {"NVIDIA-A10G": 2},
        "now": NOW,
        "fingerprint": "etag-1",
    }
    base.update(kw)
    return Observed(**base)


def result(name: str, key: str, selected: str | None = "onnxruntime-cuda-fp32") -> TargetStatus:
    """A stored result; `selected=None` stands for one whose only fast candidate failed its
    accuracy gate (the operator re-applies selection to stored measurements)."""
    lat = Latency(p50=1, p90=1, p99=1, mean=1)

    def acc(passed: bool) -> AccuracyResult:
        return AccuracyResult(
            passed=passed, criterion="c", samples=1, max_abs_error=0, relative_error=0
        )

    cands = [
        CandidateStatus(
            name="pytorch-cuda-fp32",
            backend=Backend.PYTORCH,
            precision=Precision.FP32,
            device="cuda",
            state=State.OK,
            throughput=100,
            speedup=1.0,
            latency_ms=lat,
            accuracy=acc(True),
        ),
        CandidateStatus(
            name="onnxruntime-cuda-fp32",
            backend=Backend.ONNXRUNTIME,
            precision=Precision.FP32,
            device="cuda",
            state=State.OK,
            throughput=150,
            speedup=1.5,
            latency_ms=lat,
            accuracy=acc(selected is not None),
        ),
    ]
    return TargetStatus(
        name=name,
        device="cuda" if name != "cpu" else "cpu",
        state=State.OK,
        baseline="pytorch-cuda-fp32",
        selected=selected,
        cache_key=key,
        result=f"s3://kiln/artifacts/{key}/result.json",
        candidates=cands,
    )


def cond(status: OptimizedModelStatus | None, type_: str) -> Condition:
    assert status is not None
    return next(c for c in status.conditions if c.type == type_)


def kinds(manifests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in manifests]


def test_targets_from_nodes() -> None:
    types = {"NVIDIA-L4": 2}  # what the operator's node index counts (test_operator_loop)
    spec = model().spec
    intents, missing = desired_targets(spec.targets, types, ["NVIDIA-H100"])
    assert intents == [
        TargetIntent("cpu", "cpu"),
        TargetIntent("NVIDIA-L4", "cuda"),
        TargetIntent("NVIDIA-H100", "cuda", stale=True),
    ]
    assert missing == []
    only_gpu = model(targets={"cpu": False, "gpuTypes": ["NVIDIA-B200"]}).spec
    intents, missing = desired_targets(only_gpu.targets, types, [])
    assert intents == []
    assert missing == ["NVIDIA-B200"]
    # No GPU node at all: a CPU target even when the spec did not ask for one.
    assert desired_targets(model(targets={"cpu": False}).spec.targets, {}, [])[0] == [
        TargetIntent("cpu", "cpu")
    ]


def test_first_pass_starts_the_export_job_only() -> None:
    p = plan(observed(), CONFIG)
    assert p.status is not None
    assert p.status.phase is Phase.EXPORTING
    ekey, _ = request_keys(observed(), CONFIG)
    assert kinds(p.apply) == [
        ("ConfigMap", names.request_configmap("lipsync", ekey)),
        ("Job", names.export_job("lipsync", ekey)),
    ]
    job = p.apply[1]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][3:5] == ["--stage", "export"]
    assert container["args"][5:] == ["--termination-log", container["terminationMessagePath"]]
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert cond(p.status, "Accepted").status == "True"
    assert cond(p.status, "Exported").reason == "Exporting"
    assert p.requeue_after == 5
    assert p.status.observed_generation == 3


def test_failed_export_job_is_reported_with_its_message() -> None:
    ekey, _ = request_keys(observed(), CONFIG)
    failed = JobState(
        names.export_job("lipsync", ekey), failed=True, message="spec.inputs: bad shape"
    )
    p = plan(observed(jobs={failed.name: failed}), CONFIG)
    assert p.status is not None
    assert p.status.phase is Phase.FAILED
    assert cond(p.status, "Exported").message == "spec.inputs: bad shape"
    assert ("Warning", "ExportFailed", "Degraded=True: spec.inputs: bad shape") in p.events


def test_one_pinned_job_per_target_after_export() -> None:
    p = plan(observed(export_done=True), CONFIG)
    jobs = [m for m in p.apply if m["kind"] == "Job"]
    assert len(jobs) == 2
    gpu = next(j for j in jobs if j["metadata"]["labels"].get(names.TARGET_LABEL) == "nvidia-a10g")
    pod = gpu["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A10G"}
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "1"}}
    assert pod["containers"][0]["args"][-2:] == ["--target", "NVIDIA-A10G"]
    assert gpu["spec"]["backoffLimit"] == CONFIG.backoff_limit
    # Bad input (exit 2) fails the Job at once; a crash is retried; an eviction is not counted.
    rules = gpu["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"] == {"containerName": "builder", "operator": "In", "values": [2]}
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert p.status is not None
    assert p.status.phase is Phase.BUILDING
    assert cond(p.status, "Built").status == "False"


def test_existing_results_mean_no_job_and_a_server_per_selected_engine() -> None:
    _, keys = request_keys(observed(export_done=True), CONFIG)
    results = {
        keys["cpu"]: result("cpu", "result-c", selected=None),
        keys["NVIDIA-A10G"]: result("NVIDIA-A10G", "result-g"),
    }
    p = plan(observed(export_done=True, results=results), CONFIG)
    assert [k for k, _ in kinds(p.apply)] == ["Deployment", "Service"]
    deploy = p.apply[0]
    template = deploy["spec"]["template"]
    assert template["metadata"]["annotations"][names.ENGINE_ANNOTATION] == "result-g"
    args = template["spec"]["containers"][0]["args"]
    assert args[:5] == [
        "serve",
        "--result",
        "s3://kiln/artifacts/result-g/result.json",
        "--cache-key",
        "result-g",
    ]
    assert args[args.index("--grpc-port") + 1] == "8081"
    # REST and gRPC (Triton's and KServe's clients) on the pods and on the Service.
    container = template["spec"]["containers"][0]
    assert [(q["name"], q["containerPort"]) for q in container["ports"]] == [
        ("http", 8080),
        ("grpc", 8081),
    ]
    service = p.apply[1]["spec"]["ports"]
    assert [(q["name"], q["port"], q.get("appProtocol")) for q in service] == [
        ("http", 8080, None),
        ("grpc", 8081, "grpc"),
    ]
    assert p.status is not None
    assert cond(p.status, "Ready").reason == "RollingOut"
    # Once the pods run the selected engine, the resource is Ready.
    ready = DeploymentState(deploy["metadata"]["name"], ready_replicas=1, engine_key="result-g")
    p2 = plan(observed(export_done=True, results=results, deployments={ready.name: ready}), CONFIG)
    assert p2.status is not None
    assert p2.status.phase is Phase.READY
    assert cond(p2.status, "Ready").status == "True"
    assert p2.status.best == "onnxruntime-cuda-fp32@NVIDIA-A10G"
    assert p2.status.ready_targets == "1/2"
    gpu = next(t for t in p2.status.targets if t.name == "NVIDIA-A10G")
    assert gpu.endpoint == "http://lipsync-nvidia-a10g.ml.svc:8080/v2/models/lipsync"


def test_a_result_without_selection_leaves_the_previous_engine_serving() -> None:
    _, keys = request_keys(observed(export_done=True), CONFIG)
    results = {
        keys["cpu"]: result("cpu", "r-c", selected=None),
        keys["NVIDIA-A10G"]: result("NVIDIA-A10G", "r-new", selected=None),
    }
    old = DeploymentState("lipsync-nvidia-a10g", ready_replicas=2, engine_key="r-old")
    p = plan(observed(export_done=True, results=results, deployments={old.name: old}), CONFIG)
    assert [m for m in p.apply if m["kind"] == "Deployment"] == []
    assert p.status is not None
    gpu = next(t for t in p.status.targets if t.name == "NVIDIA-A10G")
    assert gpu.deployment == "lipsync-nvidia-a10g"
    assert gpu.ready_replicas == 2


def test_min_speedup_change_re_decides_without_a_job() -> None:
    strict = model(selection={"minSpeedup": 2.0})
    _, keys = request_keys(observed(strict, export_done=True), CONFIG)
    results = {k: result(t, f"r-{t}") for t, k in keys.items()}
    p = plan(observed(strict, export_done=True, results=results), CONFIG)
    assert [m["kind"] for m in p.apply] == []
    assert p.status is not None
    assert p.status.phase is Phase.NO_IMPROVEMENT
    assert "minSpeedup 2x" in cond(p.status, "Ready").message


def test_vanished_gpu_type_goes_stale_and_scales_to_zero() -> None:
    before = OptimizedModelStatus(phase=Phase.READY, targets=[result("NVIDIA-L4", "r-l4")])
    deploy = DeploymentState("lipsync-nvidia-l4", ready_replicas=1, engine_key="r-l4")
    p = plan(observed(status=before, export_done=True, deployments={deploy.name: deploy}), CONFIG)
    assert p.scale_to_zero == ["lipsync-nvidia-l4"]
    assert p.status is not None
    stale = next(t for t in p.status.targets if t.name == "NVIDIA-L4")
    assert stale.stale
    assert "no node of this GPU type is left" in cond(p.status, "Degraded").message


def test_unknown_gpu_type_and_storage_and_input_errors() -> None:
    m = model(targets={"gpuTypes": ["NVIDIA-A10G", "NVIDIA-B200"]})
    p = plan(observed(m), CONFIG)
    assert p.status is not None
    assert cond(p.status, "Degraded").message == (
        "spec.targets.gpuTypes[1]: no node has nvidia.com/gpu.product=NVIDIA-B200"
    )
    p = plan(observed(fingerprint=None, storage_error="cannot reach the S3 endpoint"), CONFIG)
    assert p.apply == []
    assert p.requeue_after == 5
    assert p.status is not None
    assert cond(p.status, "Degraded").reason == "StorageUnavailable"
    p = plan(observed(fingerprint=None, input_error=("spec.source.uri", "no such object")), CONFIG)
    assert p.status is not None
    assert p.status.phase is Phase.FAILED
    assert cond(p.status, "Accepted").message == "spec.source.uri: no such object"


def test_transition_time_changes_only_on_a_flip() -> None:
    first = set_condition([], "Ready", False, "Building", "m", 1, "t1")
    same = set_condition(first, "Ready", False, "Building", "other message", 2, "t2")
    assert same[0].last_transition_time == "t1"
    assert same[0].observed_generation == 2
    flipped = set_condition(same, "Ready", True, "Serving", "m", 2, "t3")
    assert flipped[0].last_transition_time == "t3"
    assert [c.type for c in flips(same, flipped)] == ["Ready"]
    assert flips(first, same) == []


def test_names_are_bounded_and_stable() -> None:
    long = names.build_job("a" * 60, "NVIDIA-H100-80GB-HBM3", "req-target-0123456789abcdef")
    assert len(long) <= 63
    assert long == names.build_job("a" * 60, "NVIDIA-H100-80GB-HBM3", "req-target-0123456789abcdef")
    assert names.slug("NVIDIA H100_80GB") == "nvidia-h100-80gb"


def measured(target: TargetStatus) -> TargetStatus:
    """`result` with each candidate's headline throughput as its batch-1 benchmark."""

    def bench(c: CandidateStatus) -> BatchBenchmark:
        return BatchBenchmark(
            batch_size=1,
            latency_ms=Latency(p50=1, p90=1, p99=1, mean=1),
            throughput=c.throughput or 0.0,
            speedup=c.speedup,
            spread_percent=1.0,
            rounds=6,
            iterations=60,
            converged=True,
        )

    cands = [c.model_copy(update={"benchmarks": [bench(c)]}) for c in target.candidates]
    return target.model_copy(update={"candidates": cands})


def test_capacity_and_cost_change_no_request_key_and_size_the_deployment() -> None:
    plain = model()
    planned = model(
        serving={"replicas": "auto", "targetThroughput": 1000},
        cost={"hourly": {"NVIDIA-A10G": 1.2}},
        selection={"preferSimplerWithin": 0.2},
    )
    _, keys = request_keys(observed(plain, export_done=True), CONFIG)
    _, same = request_keys(observed(planned, export_done=True), CONFIG)
    assert keys == same
    results = {k: measured(result(t, f"r-{t}")) for t, k in keys.items()}
    p = plan(observed(planned, export_done=True, results=results), CONFIG)
    assert p.status is not None
    gpu = next(t for t in p.status.targets if t.name == "NVIDIA-A10G")
    assert gpu.capacity is not None
    # 1000/s at 80 % of 150/s (ONNX Runtime) and of 100/s (PyTorch)
    assert (gpu.capacity.selected_replicas, gpu.capacity.baseline_replicas) == (9, 13)
    assert gpu.capacity.monthly_savings == round(4 * 1.2 * 730, 2)
    assert p.status.cheapest_target == "NVIDIA-A10G"
    deploy = next(
        m for m in p.apply if m["kind"] == "Deployment" and m["metadata"]["name"].endswith("a10g")
    )
    assert deploy["spec"]["replicas"] == 9


def test_builder_and_server_pods_are_locked_down() -> None:
    """No ServiceAccount token, non-root, no privilege escalation, no capabilities, a read-only
    root filesystem with every write under one emptyDir (HOME, TMPDIR and caches point there)."""
    _, keys = request_keys(observed(export_done=True), CONFIG)
    results = {k: result(t, f"r-{t}") for t, k in keys.items()}
    served = plan(observed(export_done=True, results=results), CONFIG).apply
    exporting = plan(observed(), CONFIG).apply
    workloads = [m for m in [*served, *exporting] if m["kind"] in ("Job", "Deployment")]
    pods = [m["spec"]["template"]["spec"] for m in workloads]
    assert {m["kind"] for m in workloads} == {"Job", "Deployment"}
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        scratch = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["runAsNonRoot"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/tmp"] in scratch
        env = {e["name"]: e["value"] for e in container["env"]}
        assert all(env[k].startswith("/tmp") for k in ("HOME", "TMPDIR", "XDG_CACHE_HOME"))
