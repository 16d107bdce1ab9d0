"""observe -> plan -> apply: the writes. Server-side apply of the desired children that differ
from the cache (`kiln.operator.drift`) under one field manager, a scale-to-zero for stale
targets, and the status only when it changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.operator.decide import Manifest
from kiln.operator.drift import Writes
from kiln.operator.names import FIELD_MANAGER

TIMEOUT = 30  # seconds for every API call: a hung API server must not hang the operator
_APPLY = "application/apply-patch+yaml"


@dataclass(frozen=True)
class Clients:
    core: Any
    batch: Any
    apps: Any
    custom: Any

    @staticmethod
    def create(api_client: Any = None) -> Clients:
        from kubernetes import client

        return Clients(
            core=client.CoreV1Api(api_client),
            batch=client.BatchV1Api(api_client),
            apps=client.AppsV1Api(api_client),
            custom=client.CustomObjectsApi(api_client),
        )


def apply_manifest(clients: Clients, manifest: Manifest) -> None:
    kind = manifest["kind"]
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    method = {
        "ConfigMap": clients.core.patch_namespaced_config_map,
        "Service": clients.core.patch_namespaced_service,
        "Job": clients.batch.patch_namespaced_job,
        "Deployment": clients.apps.patch_namespaced_deployment,
    }[kind]
    method(
        name,
        namespace,
        manifest,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type=_APPLY,
        _request_timeout=TIMEOUT,
    )


def apply_writes(clients: Clients, namespace: str, writes: Writes) -> None:
    for manifest in writes.apply:
        apply_manifest(clients, manifest)
    for name in writes.scale_to_zero:
        clients.apps.patch_namespaced_deployment_scale(
            name,
            namespace,
            {"spec": {"replicas": 0}},
            field_manager=FIELD_MANAGER,  # Kiln's own write, not drift (kiln.operator.drift)
            _request_timeout=TIMEOUT,
        )


def status_patch(current: dict[str, Any] | None, desired: dict[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning `current` into `desired` (keys that vanished become null,
    lists are replaced whole), or None when there is nothing to write."""
    current = current or {}
    if current == desired:
        return None
    patch: dict[str, Any] = {key: None for key in current if key not in desired}
    patch.update({k: v for k, v in desired.items() if current.get(k) != v})
    return patch
