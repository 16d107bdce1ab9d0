"""Kopf wiring, thin: caches, wake-ups and one reconcile loop per resource.

- **Caches.** Kopf indexes, kept from watch streams, hold the GPU types on the nodes and each
  resource's builder Jobs and server Deployments (as the few fields the plan reads), so a
  reconcile pass makes no API call to read the cluster. Kopf runs no handler before every index
  is filled, so a restarted operator never mistakes "not listed yet" for "gone".
- **One loop per resource** (a Kopf daemon): observe -> plan -> apply -> status in a worker
  thread, then sleep until woken or until its requeue (something in flight) or resync time.
  Passes of one resource never overlap, so it has exactly one status writer.
- **Wake-ups.** A change to a resource's spec, to one of its Jobs or Deployments, or to the set
  of GPU types in the cluster wakes the loops concerned at once.

Kopf writes nothing to the resource but its finalizer: no progress or diff-base annotations
(there are no change handlers), so GitOps tools see only the status the loop writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf

from kiln.api.spec import API_GROUP, API_VERSION
from kiln.operator import names
from kiln.operator.apply import Clients
from kiln.operator.children import controller_uid, deployment_state, gpu_product, job_state
from kiln.operator.config import OperatorConfig
from kiln.operator.connection import bearer, load_configuration
from kiln.operator.observe import ClusterView, StoredResults
from kiln.operator.reconcile import PLURAL, Deps, Pass, reconcile_once
from kiln.operator.wakeups import Wakeups, sleep_until_woken
from kiln.storage.objects import Storage

_BUILDERS = {names.COMPONENT_LABEL: "builder", "app.kubernetes.io/managed-by": "kiln"}
_SERVERS = {names.COMPONENT_LABEL: "server", "app.kubernetes.io/managed-by": "kiln"}
MAX_BACKOFF = 300.0
_WAKEUP_HANDLERS = ("_child_changed", "_nodes_changed", "_spec_changed")


class Runtime:
    """Process-wide state set by `kiln operator` before Kopf starts."""

    config = OperatorConfig()
    kubeconfig: Path | None = None  # None: in-cluster, then $KUBECONFIG / ~/.kube/config
    clients: Clients | None = None
    storage = Storage()
    wakeups = Wakeups()
    gpu_types: frozenset[str] = frozenset()
    _deps: Deps | None = None
    _executor: ThreadPoolExecutor | None = None

    @classmethod
    def deps(cls) -> Deps:
        if cls._deps is None:
            assert cls.clients is not None, "kiln operator sets the API clients before Kopf runs"
            cls._deps = Deps(cls.config, cls.clients, StoredResults(cls.storage))
        return cls._deps

    @classmethod
    def executor(cls) -> ThreadPoolExecutor:
        if cls._executor is None:
            cls._executor = ThreadPoolExecutor(cls.config.workers, thread_name_prefix="reconcile")
        return cls._executor


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


class _QuietWakeups(logging.Filter):
    """Drop Kopf's "Handler succeeded" line for the wake-up handlers: they run on every watch
    event of every Job, Deployment and Node, and would bury the lines that matter."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            record.levelno <= logging.INFO
            and message.endswith("' succeeded.")
            and any(f"'{h}'" in message for h in _WAKEUP_HANDLERS)
        )


@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    logging.getLogger("kopf.objects").addFilter(_QuietWakeups())
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    # Our own Events only; Kopf's per-handler log lines would flood `kubectl describe`.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.peering.standalone = True


@kopf.on.probe(id="reconcileLoops")
def _loops(**_: Any) -> int:
    return len(Runtime.wakeups)


# -- caches ------------------------------------------------------------------------------------


@kopf.index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, str] | None:
    product = gpu_product(body, Runtime.config.gpu_label)
    return {product: name} if product else None


@kopf.index("batch", "v1", "jobs", labels=_BUILDERS)
async def builder_jobs(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    owner = controller_uid(body)
    return {owner: job_state(body)} if owner else None


@kopf.index("apps", "v1", "deployments", labels=_SERVERS)
async def server_deployments(body: kopf.Body, **_: Any) -> dict[str, Any] | None:
    owner = controller_uid(body)
    return {owner: deployment_state(body)} if owner else None


# -- wake-ups ----------------------------------------------------------------------------------


@kopf.on.event("batch", "v1", "jobs", labels=_BUILDERS)
@kopf.on.event("apps", "v1", "deployments", labels=_SERVERS)
async def _child_changed(body: kopf.Body, **_: Any) -> None:
    Runtime.wakeups.poke(controller_uid(body))


@kopf.on.event("", "v1", "nodes")
async def _nodes_changed(**kwargs: Any) -> None:
    types = frozenset(gpu_type_counts(kwargs["gpu_nodes"]))
    if types != Runtime.gpu_types:
        Runtime.gpu_types = types
        Runtime.wakeups.poke_all()  # a GPU type came or went: every resource has a new target


@kopf.on.event(API_GROUP, API_VERSION, PLURAL)
async def _spec_changed(body: kopf.Body, uid: str, **_: Any) -> None:
    # Status writes (ours) do not bump the generation; spec changes do.
    if body.metadata.get("generation") != (body.get("status") or {}).get("observedGeneration"):
        Runtime.wakeups.poke(uid)


# -- the reconcile loop ------------------------------------------------------------------------


def _document(body: kopf.Body) -> dict[str, Any]:
    meta = body.metadata
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta.get(k) for k in ("name", "namespace", "uid", "generation") if meta.get(k)
        },
        "spec": copy.deepcopy(dict(body.spec)),
    }


def gpu_type_counts(nodes: kopf.Index[str, str]) -> dict[str, int]:
    """GPU type -> nodes carrying it (a type whose last node left has an empty store)."""
    return dict(sorted((k, len(v)) for k, v in nodes.items() if len(v)))


def _view(
    uid: str,
    nodes: kopf.Index[str, str],
    jobs: kopf.Index[str, Any],
    deployments: kopf.Index[str, Any],
) -> ClusterView:
    return ClusterView(
        gpu_types=gpu_type_counts(nodes),
        jobs={j.name: j for j in jobs.get(uid, [])},
        deployments={d.name: d for d in deployments.get(uid, [])},
    )


def next_delay(done: Pass | None, failures: int, config: OperatorConfig) -> float:
    """Back off exponentially after failures; poll while something is in flight; otherwise
    resync with jitter, so a restarted operator's resources do not all come due at once."""
    if done is None or done.error is not None:
        return min(MAX_BACKOFF, config.requeue_seconds * 2.0 ** max(failures - 1, 0))
    if done.requeue_after is not None:
        return done.requeue_after
    return config.resync_seconds * random.uniform(0.8, 1.2)


@kopf.daemon(API_GROUP, API_VERSION, PLURAL, id="reconcile", cancellation_timeout=10.0)
async def _reconcile_loop(body: kopf.Body, uid: str, logger: Any, **indexes: Any) -> None:
    wake = Runtime.wakeups.register(uid)
    loop = asyncio.get_running_loop()
    known: dict[str, Any] | None = copy.deepcopy(dict(body.get("status") or {})) or None
    failures = 0
    try:
        while not body.metadata.get("deletionTimestamp"):
            view = _view(
                uid,
                indexes["gpu_nodes"],
                indexes["builder_jobs"],
                indexes["server_deployments"],
            )
            done: Pass | None = None
            try:
                done = await loop.run_in_executor(
                    Runtime.executor(),
                    reconcile_once,
                    _document(body),
                    known,
                    view,
                    Runtime.deps(),
                    _now(),
                )
            except Exception:
                logger.exception("reconcile pass failed; retrying with backoff")
            if done is not None:
                known = done.status
                for kind, reason, message in done.events:
                    kopf.event(body, type=kind, reason=reason, message=message[:1000])
                    logger.info(f"{reason}: {message}")
                if done.wrote and done.status is not None:
                    logger.info(f"status written: phase {done.status.get('phase')}")
                if done.error is not None:
                    logger.warning(f"apply failed: {done.error}")
            failures = 0 if done is not None and done.error is None else failures + 1
            await sleep_until_woken(wake, next_delay(done, failures, Runtime.config))
    finally:
        Runtime.wakeups.unregister(uid)
