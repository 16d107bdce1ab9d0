"""What the operator keeps of the objects it watches (pure): raw API bodies, as the watch
streams deliver them, reduced to the few fields the plan reads. These values live in Kopf's
in-memory indexes, so a reconcile reads the cluster without a single API call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from kiln.api.report import parse_report
from kiln.operator import names
from kiln.operator.drift import applied_of
from kiln.operator.observed import DeploymentState, JobState, ServiceState

Body = Mapping[str, Any]


def controller_uid(body: Body) -> str | None:
    """The uid of the object's controlling owner (the OptimizedModel of a Kiln child)."""
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            uid: str | None = ref.get("uid")
            return uid
    return None


def job_state(body: Body) -> JobState:
    status = body.get("status") or {}
    conditions = status.get("conditions") or []
    failed = next(
        (c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None
    )
    message = f"{failed.get('reason')}: {failed.get('message')}" if failed is not None else ""
    return JobState(
        name=body["metadata"]["name"],
        failed=failed is not None,
        pod_failures=int(status.get("failed") or 0),
        message=message,
        applied=applied_of(body),
    )


def deployment_state(body: Body) -> DeploymentState:
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    template = spec.get("template", {}).get("metadata", {})
    # Ready pods count only once the rollout of the current template is complete.
    replicas = spec.get("replicas", 1)
    updated = (status.get("updatedReplicas") or 0) >= replicas
    current = status.get("observedGeneration") == body.get("metadata", {}).get("generation")
    return DeploymentState(
        name=body["metadata"]["name"],
        ready_replicas=(status.get("readyReplicas") or 0) if updated and current else 0,
        engine_key=(template.get("annotations") or {}).get(names.ENGINE_ANNOTATION),
        replicas=spec.get("replicas"),
        applied=applied_of(body),
    )


def service_state(body: Body) -> ServiceState:
    return ServiceState(name=body["metadata"]["name"], applied=applied_of(body))


def gpu_product(body: Body, label: str) -> str | None:
    """The node's GPU type, from the label NVIDIA's GPU operator (or the admin) puts on it."""
    value: str | None = (body.get("metadata", {}).get("labels") or {}).get(label)
    return value or None


def newest_failure(pods: Sequence[Body]) -> tuple[int, str] | None:
    """(exit code, termination message) of the newest failed pod: the builder's JSON report,
    or the log tail Kubernetes fell back to."""
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    for pod in newest:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated is not None and terminated.get("exitCode") != 0:
                text = (terminated.get("message") or terminated.get("reason") or "").strip()
                return int(terminated["exitCode"]), text
    return None


def failed_pod(job: JobState, pods: Sequence[Body]) -> JobState:
    """`job` with what its newest failed pod says: exit code, report and message."""
    failure = newest_failure(pods)
    if failure is None:
        return job
    code, text = failure
    message = f"exit {code}: {text[-1500:]}"
    return replace(job, exit_code=code, report=parse_report(text), message=message)
