"""Kopf handlers: thin. Each one observes, plans (pure) and applies; the same function runs on
create, on spec changes, on resume after a restart, and on a timer (which picks up new or
vanished GPU node types and finished Jobs without any change to the resource)."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import kopf

from kiln.api.errors import KilnInputError
from kiln.api.load import parse_document
from kiln.api.spec import API_GROUP, API_VERSION
from kiln.operator.apply import Clients, apply_plan, status_changed
from kiln.operator.config import OperatorConfig
from kiln.operator.connection import bearer, load_configuration
from kiln.operator.observe import observe
from kiln.operator.plan import Plan
from kiln.storage.objects import Storage

PLURAL = "optimizedmodels"
log = logging.getLogger("kiln.operator")


class Runtime:
    """Process-wide state set by `kiln operator` before Kopf starts."""

    config = OperatorConfig()
    kubeconfig: Path | None = None  # None: in-cluster, then $KUBECONFIG / ~/.kube/config
    clients: Clients | None = None
    storage = Storage()


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reconcile(body: kopf.Body, patch: kopf.Patch, logger: Any) -> Plan | None:
    document = {k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")}
    metadata = dict(body.metadata)
    document["metadata"] = {
        k: metadata.get(k) for k in ("name", "namespace", "uid", "generation") if metadata.get(k)
    }
    try:
        model = parse_document(document, f"{body.metadata.namespace}/{body.metadata.name}")
    except KilnInputError as exc:
        # The CRD schema catches most of this; what it cannot goes on the Accepted condition.
        kopf.warn(body, reason="InvalidSpec", message=exc.message[:1000])
        patch.status["phase"] = "Failed"
        patch.status["message"] = exc.message[:1000]
        return None
    assert Runtime.clients is not None
    from kiln.operator.plan import plan as make_plan

    observed = observe(
        model, dict(body.status or {}), Runtime.config, Runtime.clients, Runtime.storage, _now()
    )
    decided = make_plan(observed, Runtime.config)
    apply_plan(Runtime.clients, model.metadata.namespace or "default", decided)
    assert decided.status is not None
    desired = decided.status.to_wire()
    if status_changed(dict(body.status or {}), desired):
        # Merge patch: keys that vanished from the desired status are set to null.
        for key in set(body.status or {}) - set(desired):
            patch.status[key] = None
        for key, value in desired.items():
            patch.status[key] = value
    for kind, reason, message in decided.events:
        (kopf.info if kind == "Normal" else kopf.warn)(body, reason=reason, message=message[:1000])
    return decided


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    configuration = load_configuration(Runtime.kubeconfig)
    scheme, token = bearer(configuration)
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.peering.standalone = True


@kopf.on.create(API_GROUP, API_VERSION, PLURAL)
@kopf.on.update(API_GROUP, API_VERSION, PLURAL, field="spec")
@kopf.on.resume(API_GROUP, API_VERSION, PLURAL)
def _on_change(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile(body, patch, logger)


@kopf.timer(API_GROUP, API_VERSION, PLURAL, interval=10.0, initial_delay=5.0, idle=None)
def _on_timer(body: kopf.Body, patch: kopf.Patch, logger: Any, **_: Any) -> None:
    reconcile(body, patch, logger)
