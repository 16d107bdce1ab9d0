"""Children of an OptimizedModel as plain manifests (pure): the build request ConfigMap, the
export and per-target builder Jobs, and the inference Deployment + Service per target."""

from __future__ import annotations

from typing import Any

from kiln.api.errors import ExitCode
from kiln.api.request import REQUEST_FILE, BuildRequest, Stage
from kiln.api.spec import API_GROUP, API_VERSION, KIND, OptimizedModel, Serving
from kiln.api.status import TargetStatus
from kiln.operator import names
from kiln.operator.config import OperatorConfig
from kiln.operator.targets import TargetIntent

REQUEST_DIR = "/etc/kiln/request"
GPU_RESOURCE = "nvidia.com/gpu"
TERMINATION_LOG = "/dev/termination-log"

Manifest = dict[str, Any]


def owner_reference(model: OptimizedModel) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": model.metadata.name,
        "uid": model.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(model: OptimizedModel, name: str, labels: dict[str, str], **annotations: str) -> Manifest:
    meta: Manifest = {
        "name": name,
        "namespace": model.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(model)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def request_configmap(model: OptimizedModel, request: BuildRequest) -> Manifest:
    key = request.request_key
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(
            model,
            names.request_configmap(model.metadata.name, key),
            names.labels(model.metadata.name, "request"),
            **{names.REQUEST_ANNOTATION: key},
        ),
        "data": {REQUEST_FILE: request.to_json()},
    }


def _credentials(secret: str | None) -> list[dict[str, Any]]:
    return [{"secretRef": {"name": secret}}] if secret else []


def _placement(config: OperatorConfig, target: TargetIntent | None) -> tuple[Manifest, Manifest]:
    """(pod-spec fields, container resources) pinning a pod to its GPU type."""
    if target is None or target.device == "cpu":
        return {}, {}
    pod = {
        "nodeSelector": {config.gpu_label: target.name},
        "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
    }
    return pod, {"limits": {GPU_RESOURCE: "1"}}


_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The root filesystem is read-only: everything a builder or server writes (downloads, the
# work folder, compiler caches of torch and Triton, the compiled gRPC messages) goes under one
# emptyDir, which HOME, TMPDIR and XDG_CACHE_HOME point into, whatever the image sets.
SCRATCH = "/tmp"
_SCRATCH_VOLUME = {"name": "scratch", "emptyDir": {}}
_SCRATCH_MOUNT = {"name": "scratch", "mountPath": SCRATCH}
_SCRATCH_ENV = [
    {"name": "HOME", "value": SCRATCH},
    {"name": "TMPDIR", "value": SCRATCH},
    {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/cache"},
]


def _pod_hardening() -> Manifest:
    """Pod fields every builder and server gets: neither talks to the Kubernetes API, so no
    ServiceAccount token is mounted."""
    return {"automountServiceAccountToken": False}


def pod_failure_policy() -> Manifest:
    """How Kubernetes treats a failed builder pod, from the error taxonomy (kiln.api.errors)."""

    def exits(code: ExitCode) -> Manifest:
        return {"containerName": "builder", "operator": "In", "values": [int(code)]}

    return {
        "rules": [
            # Bad input: a retry cannot help, so the Job fails at once.
            {"action": "FailJob", "onExitCodes": exits(ExitCode.BAD_INPUT)},
            # An evicted or preempted pod is not the builder's fault: not counted.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # Storage unreachable: retried with the Job's exponential backoff; when the Job
            # gives up, the operator starts the next attempt (never a failed resource).
            {"action": "Count", "onExitCodes": exits(ExitCode.TRANSIENT)},
        ]
    }


def builder_job(
    config: OperatorConfig,
    model: OptimizedModel,
    request: BuildRequest,
    target: TargetIntent | None,
    secret: str | None,
    attempt: int = 0,
) -> Manifest:
    """The export Job (`target` None) or a target's build Job, for one attempt."""
    key = request.request_key
    name = model.metadata.name
    stage = Stage.EXPORT if target is None else Stage.TARGET
    job_name = (
        names.export_job(name, key, attempt)
        if target is None
        else names.build_job(name, target.name, key, attempt)
    )
    labels = {
        **names.labels(name, "builder", target.name if target else None),
        names.STAGE_LABEL: stage.value,
    }
    args = [
        "build",
        "--request",
        f"{REQUEST_DIR}/{REQUEST_FILE}",
        "--stage",
        stage.value,
        "--termination-log",
        TERMINATION_LOG,
    ]
    if target is not None:
        args += ["--target", target.name]
    pod, resources = _placement(config, target)
    container: Manifest = {
        "name": "builder",
        "image": config.builder_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["kiln"],
        "args": args,
        "envFrom": _credentials(secret),
        "env": _SCRATCH_ENV,
        "volumeMounts": [
            {"name": "request", "mountPath": REQUEST_DIR, "readOnly": True},
            _SCRATCH_MOUNT,
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _SECURITY,
    }
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(model, job_name, labels, **{names.REQUEST_ANNOTATION: key}),
        "spec": {
            "backoffLimit": config.backoff_limit,
            "podFailurePolicy": pod_failure_policy(),
            "activeDeadlineSeconds": config.job_deadline_seconds,
            "ttlSecondsAfterFinished": config.job_ttl_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "request",
                            "configMap": {"name": names.request_configmap(name, key)},
                        },
                        _SCRATCH_VOLUME,
                    ],
                    **_pod_hardening(),
                    **pod,
                },
            },
        },
    }


def replicas(serving: Serving, result: TargetStatus) -> int:
    """The spec's count; with 'auto', what the capacity plan says the selected engine needs to
    sustain serving.targetThroughput on this target (one until it is known)."""
    if serving.replicas != "auto":
        return serving.replicas
    plan = result.capacity
    return plan.selected_replicas if plan and plan.selected_replicas else 1


def server_deployment(
    config: OperatorConfig,
    model: OptimizedModel,
    target: TargetIntent,
    result: TargetStatus,
    secret: str | None,
) -> Manifest:
    """The Deployment serving `result.selected`. The engine's result key rides in a pod-template
    annotation, so a new engine rolls the pods and an unchanged one leaves them alone."""
    name = model.metadata.name
    serving = model.spec.serving
    deploy_name = names.server(name, target.name)
    labels = {**names.labels(name, "server", target.name), **serving.labels}
    selector = names.labels(name, "server", target.name)
    pod, resources = _placement(config, target)
    result_key = result.cache_key or ""
    args = [
        "serve",
        "--result",
        result.result or "",
        "--cache-key",
        result_key,
        "--target",
        target.name,
        "--name",
        name,
        "--host",
        "0.0.0.0",
        "--port",
        str(serving.port),
        "--grpc-port",
        str(serving.grpc_port),
        "--batch-window-ms",
        f"{serving.batch_window_ms:g}",
    ]
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5}
    container: Manifest = {
        "name": "server",
        "image": config.server_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["kiln"],
        "args": args,
        "envFrom": _credentials(secret),
        "env": _SCRATCH_ENV,
        "volumeMounts": [_SCRATCH_MOUNT],
        "ports": [
            {"name": "http", "containerPort": serving.port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": serving.grpc_port, "protocol": "TCP"},
        ],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}},
        "startupProbe": {**probe, "failureThreshold": 60},
        "securityContext": _SECURITY,
    }
    merged = _merge_resources(serving.resources, resources)
    if merged:
        container["resources"] = merged
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(model, deploy_name, labels, **serving.annotations),
        "spec": {
            "replicas": 0 if target.stale else replicas(serving, result),
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {**serving.annotations, names.ENGINE_ANNOTATION: result_key},
                },
                "spec": {
                    "containers": [container],
                    "volumes": [_SCRATCH_VOLUME],
                    **_pod_hardening(),
                    **pod,
                },
            },
        },
    }


def server_service(model: OptimizedModel, target: TargetIntent) -> Manifest:
    name = model.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(
            model, names.server(name, target.name), names.labels(name, "server", target.name)
        ),
        "spec": {
            "selector": names.labels(name, "server", target.name),
            "ports": [
                {"name": "http", "port": model.spec.serving.port, "targetPort": "http"},
                {
                    "name": "grpc",
                    "port": model.spec.serving.grpc_port,
                    "targetPort": "grpc",
                    "appProtocol": "grpc",  # so meshes and gateways speak HTTP/2 to it
                },
            ],
        },
    }


def endpoint(model: OptimizedModel, target: TargetIntent) -> str:
    svc = names.server(model.metadata.name, target.name)
    port = model.spec.serving.port
    return f"http://{svc}.{model.metadata.namespace}.svc:{port}/v2/models/{model.metadata.name}"


def _merge_resources(user: dict[str, dict[str, str]], required: Manifest) -> Manifest:
    out: Manifest = {k: dict(v) for k, v in user.items()}
    for kind, values in required.items():
        out.setdefault(kind, {}).update(values)
    return out
