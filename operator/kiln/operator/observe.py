"""observe -> plan -> apply: the reads. Everything the plan needs, gathered from the API server
and object storage; no decisions here."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from kiln.api.errors import KilnInputError, StorageUnavailableError
from kiln.api.layout import RESULT_FILE
from kiln.api.spec import OptimizedModel
from kiln.api.status import TargetStatus
from kiln.operator import names
from kiln.operator.config import OperatorConfig
from kiln.operator.plan import DeploymentState, JobState, Observed, artifacts_uri, request_keys
from kiln.operator.targets import gpu_types
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri

TIMEOUT = 30  # seconds for every API call: a hung API server must not hang the operator


def fingerprint(storage: Storage, model: OptimizedModel) -> str:
    """What identifies the source and calibration objects' content without downloading them:
    S3 ETags and sizes, or local sizes and modification times."""
    parts: list[str] = []
    locations = [("spec.source.uri", parse_uri(model.spec.source.uri))]
    for field_name, loc in locations:
        parts.append(f"{loc.uri}={_object_id(storage, loc, field_name)}")
    if model.spec.calibration is not None:
        root = parse_uri(model.spec.calibration.uri)
        try:
            shards = [loc for loc in storage.list(root) if loc.key.endswith(".npz")]
        except KilnInputError as exc:
            raise type(exc)(f"spec.calibration.uri ({exc.where})", exc.message) from None
        if not shards:
            raise KilnInputError("spec.calibration.uri", f"no .npz shards under {root.uri}")
        parts += [f"{s.uri}={_object_id(storage, s, 'spec.calibration.uri')}" for s in shards]
    return "fp-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _object_id(storage: Storage, loc: Location, field_name: str) -> str:
    if loc.scheme == "file":
        path = Path(loc.key)
        if not path.is_file():
            raise KilnInputError(f"{field_name} ({loc.uri})", "no such file")
        stat = path.stat()
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    try:
        head = storage.head(loc)
    except KilnInputError as exc:
        raise type(exc)(f"{field_name} ({exc.where})", exc.message) from None
    return f"{head.get('ContentLength')}:{head.get('ETag')}"


def nodes_gpu_types(core: Any, label: str) -> dict[str, int]:
    nodes = core.list_node(label_selector=label, _request_timeout=TIMEOUT).items
    return gpu_types([n.metadata.labels or {} for n in nodes], label)


def jobs(batch: Any, core: Any, namespace: str, model: str) -> dict[str, JobState]:
    selector = f"{names.MODEL_LABEL}={names.slug(model)},{names.COMPONENT_LABEL}=builder"
    found: dict[str, JobState] = {}
    for job in batch.list_namespaced_job(
        namespace, label_selector=selector, _request_timeout=TIMEOUT
    ).items:
        status = job.status
        failed_cond = next(
            (c for c in (status.conditions or []) if c.type == "Failed" and c.status == "True"),
            None,
        )
        message = ""
        if failed_cond is not None:
            message = _pod_message(core, namespace, job.metadata.name) or (
                f"{failed_cond.reason}: {failed_cond.message}"
            )
        found[job.metadata.name] = JobState(
            name=job.metadata.name,
            succeeded=bool(status.succeeded),
            failed=failed_cond is not None,
            message=message,
        )
    return found


def _pod_message(core: Any, namespace: str, job: str) -> str:
    """The newest failed pod's termination message (the builder's JSON line, or the log tail
    Kubernetes fell back to)."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job}", _request_timeout=TIMEOUT
    ).items
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp or 0, reverse=True):
        for cs in pod.status.container_statuses or []:
            terminated = cs.state.terminated if cs.state else None
            if terminated is not None and terminated.exit_code != 0:
                text = (terminated.message or terminated.reason or "").strip()
                return f"exit {terminated.exit_code}: {text[-1500:]}"
    return ""


def deployments(apps: Any, namespace: str, model: str) -> dict[str, DeploymentState]:
    selector = f"{names.MODEL_LABEL}={names.slug(model)},{names.COMPONENT_LABEL}=server"
    found: dict[str, DeploymentState] = {}
    for d in apps.list_namespaced_deployment(
        namespace, label_selector=selector, _request_timeout=TIMEOUT
    ).items:
        annotations = d.spec.template.metadata.annotations or {}
        # Ready pods count only once the rollout of the current template is complete.
        updated = (d.status.updated_replicas or 0) >= (d.spec.replicas or 0)
        found[d.metadata.name] = DeploymentState(
            name=d.metadata.name,
            ready_replicas=(d.status.ready_replicas or 0) if updated else 0,
            engine_key=annotations.get(names.ENGINE_ANNOTATION),
        )
    return found


def observe(
    model: OptimizedModel,
    status: Any,
    config: OperatorConfig,
    clients: Any,
    storage: Storage,
    now: str,
) -> Observed:
    from kiln.api.status import OptimizedModelStatus

    current = (
        OptimizedModelStatus.model_validate(status) if status and status.get("phase") else None
    )
    namespace = model.metadata.namespace or "default"
    base = Observed(
        model=model,
        status=current,
        gpu_types=nodes_gpu_types(clients.core, config.gpu_label),
        now=now,
        jobs=jobs(clients.batch, clients.core, namespace, model.metadata.name),
        deployments=deployments(clients.apps, namespace, model.metadata.name),
    )
    uri = artifacts_uri(model, config)
    if uri is None:
        return base
    try:
        fp = fingerprint(storage, model)
        with_fp = _replace(base, fingerprint=fp)
        ekey, tkeys = request_keys(with_fp, config)
        store = ArtifactStore(storage, parse_uri(uri), Path("/tmp/kiln-operator"))
        results: dict[str, TargetStatus] = {}
        for key in tkeys.values():
            if store.manifest(key) is not None:
                results[key] = TargetStatus.model_validate(store.read_json(key, RESULT_FILE))
        return _replace(with_fp, export_done=store.manifest(ekey) is not None, results=results)
    except StorageUnavailableError as exc:
        return _replace(base, storage_error=str(exc))
    except KilnInputError as exc:
        return _replace(base, input_error=(exc.where, exc.message))


def _replace(observed: Observed, **changes: Any) -> Observed:
    from dataclasses import replace

    return replace(observed, **changes)
