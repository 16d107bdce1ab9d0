"""One reconcile pass of one resource: parse -> observe -> plan (pure) -> apply -> status.

It runs in a worker thread (the Kubernetes client and boto3 block), called by the resource's
reconcile loop in `handlers`, which serialises passes per resource: one writer per object, so
the status it last wrote is the status on the object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.api.load import parse_document
from kiln.api.spec import API_GROUP, API_VERSION, PLURAL
from kiln.operator.apply import TIMEOUT, Clients, apply_writes, status_patch
from kiln.operator.children import failed_pod
from kiln.operator.config import OperatorConfig
from kiln.operator.drift import writes
from kiln.operator.observe import ClusterView, StoredResults, observe
from kiln.operator.observed import JobState
from kiln.operator.plan import Plan, parse_status, plan, rejected, with_apply_error


@dataclass(frozen=True)
class Deps:
    config: OperatorConfig
    clients: Clients
    stored: StoredResults


@dataclass
class Pass:
    status: dict[str, Any] | None  # the status now on the resource
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    error: str | None = None  # set when a write failed: the loop backs off and retries
    wrote: bool = False  # the status
    children_written: int = 0  # applies and scales sent (0 on a pass that found all in place)


def reconcile_once(
    document: dict[str, Any],
    status: dict[str, Any] | None,
    cluster: ClusterView,
    deps: Deps,
    now: str,
) -> Pass:
    meta = document["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    error: str | None = None
    sent = 0
    try:
        model = parse_document(document, f"{namespace}/{name}")
    except InvalidSpecError as exc:
        # The CRD schema catches most of this; what only Kiln's rules catch goes on the status.
        decided = rejected(status, meta.get("generation"), "; ".join(exc.problems), now)
    except KilnInputError as exc:  # not a mapping at all
        decided = rejected(status, meta.get("generation"), exc.message, now)
    else:
        observed = observe(
            model,
            status,
            deps.config,
            cluster,
            deps.stored,
            now,
            lambda job: _with_failed_pod(deps.clients, namespace, job),
        )
        decided = plan(observed, deps.config)
        pending = writes(decided.apply, decided.scale_to_zero, observed)
        try:
            apply_writes(deps.clients, namespace, pending)
            sent = len(pending)
        except Exception as exc:  # the API server refused a write: say so on the resource
            error = api_error_message(exc)
            decided = with_apply_error(decided, parse_status(status), error, now)
    done = _write_status(deps.clients, namespace, name, status, decided, error)
    done.children_written = sent
    return done


def _write_status(
    clients: Clients,
    namespace: str,
    name: str,
    status: dict[str, Any] | None,
    decided: Plan,
    error: str | None,
) -> Pass:
    assert decided.status is not None
    desired = decided.status.to_wire()
    patch = status_patch(status, desired)
    if patch is not None:
        clients.custom.patch_namespaced_custom_object_status(
            API_GROUP,
            API_VERSION,
            namespace,
            PLURAL,
            name,
            {"status": patch},
            _content_type="application/merge-patch+json",
            _request_timeout=TIMEOUT,
        )
    return Pass(desired, decided.events, decided.requeue_after, error, wrote=patch is not None)


def _with_failed_pod(clients: Clients, namespace: str, job: JobState) -> JobState:
    pods = clients.core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job.name}", _request_timeout=TIMEOUT
    ).items
    return failed_pod(job, [clients.core.api_client.sanitize_for_serialization(p) for p in pods])


def api_error_message(exc: Exception) -> str:
    """One line for a condition: the API server's own message where there is one."""
    import json

    body = getattr(exc, "body", None)
    status = getattr(exc, "status", None)
    if body:
        try:
            message = json.loads(body).get("message")
        except (ValueError, AttributeError):
            message = None
        if message:
            return f"{status} {getattr(exc, 'reason', '')}: {message}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]
