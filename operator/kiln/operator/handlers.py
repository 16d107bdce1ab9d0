"""Kopf wiring, thin: caches, wake-ups and one reconcile loop per resource.

- **Context.** What the handlers share (settings, API clients, stored results, wake-ups, the
  worker threads) is one frozen `OperatorContext`, built once by `kiln.operator.startup` and
  handed to `kopf.run` as its `memo`. Kopf gives that memo (per object, a shallow copy of it) to
  every handler it calls: activities, indexes, events, daemons and probes. This module keeps no
  state of its own, so nothing has to be assigned to it before Kopf starts.
- **Caches.** Kopf indexes, kept from watch streams, hold the GPU types on the nodes and each
  resource's builder Jobs and server Deployments (as the few fields the plan reads), so a
  reconcile pass makes no API call to read the cluster. Kopf runs no handler before every index
  is filled, so a restarted operator never mistakes "not listed yet" for "gone".
- **One loop per resource** (a Kopf daemon): observe -> plan -> apply -> status in a worker
  thread, then sleep until woken or until its requeue (something in flight) or resync time.
  Passes of one resource never overlap, so it has exactly one status writer.
- **Wake-ups.** A change to a resource's spec, to one of its Jobs or Deployments, or to the set
  of GPU types in the cluster wakes the loops concerned at once. The pokes ride on the indexing
  functions: Kopf calls them on every watch event but a deletion and logs their success only in
  verbose mode (their logger is Kopf's `TerseObjectLogger`), where an `@kopf.on.event` handler
  logs "Handler ... succeeded." at INFO for every event of every Job, Deployment and Node. No
  indexing function sees a deletion (Kopf drops the object from its indexes), so event handlers
  filtered to DELETED cover those: one line per object gone, not one per status update.

Kopf writes nothing to the resource but its finalizer: no progress or diff-base annotations
(there are no change handlers), so GitOps tools see only the status the loop writes.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
import random
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import kopf

from kiln.api.spec import API_GROUP, API_VERSION, PLURAL
from kiln.operator import names
from kiln.operator.children import (
    controller_uid,
    deployment_state,
    gpu_product,
    job_state,
    service_state,
)
from kiln.operator.config import OperatorConfig
from kiln.operator.connection import bearer, load_configuration
from kiln.operator.observe import ClusterView
from kiln.operator.reconcile import Deps, Pass, reconcile_once
from kiln.operator.wakeups import LastSeen, Wakeups, sleep_until_woken

# Read-only views: this module holds constants only, the state is the context's.
_BUILDERS = MappingProxyType(
    {names.COMPONENT_LABEL: "builder", "app.kubernetes.io/managed-by": "kiln"}
)
_SERVERS = MappingProxyType(
    {names.COMPONENT_LABEL: "server", "app.kubernetes.io/managed-by": "kiln"}
)
MAX_BACKOFF = 300.0
_MEMO_KEY = "context"


def _no_gpu_types_yet() -> LastSeen[frozenset[str]]:
    return LastSeen(frozenset())


@dataclass(frozen=True)
class OperatorContext:
    """Everything the handlers read, built once before Kopf starts (`kiln.operator.startup`).
    Frozen: what changes while the operator runs lives in objects it owns, each with one job
    (the loops' wake-up events, the GPU types they were last told about)."""

    kubeconfig: Path | None  # None: in-cluster, then $KUBECONFIG / ~/.kube/config
    deps: Deps  # settings, API clients and stored results, as a reconcile pass takes them
    executor: ThreadPoolExecutor  # the reconcile passes' threads (the clients block)
    wakeups: Wakeups = field(default_factory=Wakeups)
    gpu_types: LastSeen[frozenset[str]] = field(default_factory=_no_gpu_types_yet)

    @property
    def config(self) -> OperatorConfig:
        return self.deps.config

    def memo(self) -> kopf.Memo:
        """The `memo` for `kopf.run`. Kopf copies it per object, shallowly: every handler gets
        this very context."""
        return kopf.Memo({_MEMO_KEY: self})

    @staticmethod
    def of(memo: Mapping[str, Any]) -> OperatorContext:
        context = memo.get(_MEMO_KEY)
        if not isinstance(context, OperatorContext):
            raise TypeError("Kopf was started without the operator's context: use startup.run")
        return context


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.login()
def _login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    configuration = load_configuration(OperatorContext.of(memo).kubeconfig)
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
    # Our own Events only; Kopf's per-handler log lines would flood `kubectl describe`.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    settings.peering.standalone = True


@kopf.on.probe(id="reconcileLoops")
async def _loops(memo: kopf.Memo, **_: Any) -> int:
    # Async, so it reads the wake-ups on the event loop that owns them.
    return len(OperatorContext.of(memo).wakeups)


# -- caches and the wake-ups they carry --------------------------------------------------------
#
# An indexing function runs just before Kopf stores what it returns, and it pokes a loop
# before that. The loop still reads the new entry: Kopf stores it in the same step of the same
# asyncio task (an async function's return is not a suspension point), and a poked loop runs
# only once that task yields. tests/unit/test_operator_loop.py runs Kopf's indexing step to
# hold Kopf to it.
#
# The caches return {} rather than None for an object with nothing to index: Kopf leaves an
# object's earlier entry in place when its function returns None, so a node that lost its GPU
# label would keep its type, and a Job that lost its owner would stay with the old one.


@kopf.index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, name: str, memo: kopf.Memo, **kwargs: Any) -> dict[str, str]:
    context = OperatorContext.of(memo)
    product = gpu_product(body, context.config.gpu_label)
    _gpu_types_now(context, gpu_types_after(kwargs["gpu_nodes"], name, product))
    return {product: name} if product else {}


@kopf.index("batch", "v1", "jobs", labels=_BUILDERS)
async def builder_jobs(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return _child_indexed(OperatorContext.of(memo), body, job_state)


@kopf.index("apps", "v1", "deployments", labels=_SERVERS)
async def server_deployments(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return _child_indexed(OperatorContext.of(memo), body, deployment_state)


@kopf.index("", "v1", "services", labels=_SERVERS)
async def server_services(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    return _child_indexed(OperatorContext.of(memo), body, service_state)


@kopf.index(API_GROUP, API_VERSION, PLURAL)
async def spec_changes(body: kopf.Body, uid: str, memo: kopf.Memo, **_: Any) -> None:
    """Indexes nothing: the quiet hook on every watch event of a resource (see above)."""
    # Status writes (ours) do not bump the generation; spec changes do.
    if body.metadata.get("generation") != (body.get("status") or {}).get("observedGeneration"):
        OperatorContext.of(memo).wakeups.poke(uid)


def _child_indexed(
    context: OperatorContext, body: kopf.Body, state: Callable[[kopf.Body], Any]
) -> dict[str, Any]:
    owner = controller_uid(body)
    context.wakeups.poke(owner)
    return {owner: state(body)} if owner else {}


def gpu_types_after(
    nodes: Mapping[str, Collection[str]], name: str, product: str | None
) -> frozenset[str]:
    """The GPU types in the cluster once node `name` carries `product` (None: no GPU), from the
    node index as it is before Kopf stores the node's new entry: a type stays while any other
    node carries it."""
    others = {gpu for gpu, nodes_of in nodes.items() if any(n != name for n in nodes_of)}
    return frozenset((others | {product}) if product else others)


def _gpu_types_now(context: OperatorContext, types: frozenset[str]) -> None:
    if context.gpu_types.update(types):
        context.wakeups.poke_all()  # a GPU type came or went: every resource has a new target


def _deleted(**kwargs: Any) -> bool:
    return bool(kwargs["type"] == "DELETED")


@kopf.on.event("", "v1", "nodes", when=_deleted)
async def _node_deleted(memo: kopf.Memo, **kwargs: Any) -> None:
    # Kopf has dropped the node from the index already: the index is the cluster without it.
    _gpu_types_now(OperatorContext.of(memo), frozenset(gpu_type_counts(kwargs["gpu_nodes"])))


@kopf.on.event("batch", "v1", "jobs", labels=_BUILDERS, when=_deleted)
@kopf.on.event("apps", "v1", "deployments", labels=_SERVERS, when=_deleted)
@kopf.on.event("", "v1", "services", labels=_SERVERS, when=_deleted)
async def _child_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    OperatorContext.of(memo).wakeups.poke(controller_uid(body))


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


def _view(uid: str, indexes: Mapping[str, Any]) -> ClusterView:
    return ClusterView(
        gpu_types=gpu_type_counts(indexes["gpu_nodes"]),
        jobs={j.name: j for j in indexes["builder_jobs"].get(uid, [])},
        deployments={d.name: d for d in indexes["server_deployments"].get(uid, [])},
        services={s.name: s.applied for s in indexes["server_services"].get(uid, [])},
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
async def _reconcile_loop(
    body: kopf.Body, uid: str, logger: Any, memo: kopf.Memo, **indexes: Any
) -> None:
    context = OperatorContext.of(memo)
    wake = context.wakeups.register(uid)
    loop = asyncio.get_running_loop()
    known: dict[str, Any] | None = copy.deepcopy(dict(body.get("status") or {})) or None
    failures = 0
    try:
        while not body.metadata.get("deletionTimestamp"):
            view = _view(uid, indexes)
            done: Pass | None = None
            try:
                done = await loop.run_in_executor(
                    context.executor,
                    reconcile_once,
                    _document(body),
                    known,
                    view,
                    context.deps,
                    _now(),
                )
            except Exception:
                logger.exception("reconcile pass failed; retrying with backoff")
            if done is not None:
                known = done.status
                _report(body, done, logger)
            failures = 0 if done is not None and done.error is None else failures + 1
            await sleep_until_woken(wake, next_delay(done, failures, context.config))
    finally:
        context.wakeups.unregister(uid)


def _report(body: kopf.Body, done: Pass, logger: Any) -> None:
    """A pass's Events on the resource, and its outcome in the operator's log."""
    for kind, reason, message in done.events:
        kopf.event(body, type=kind, reason=reason, message=message[:1000])
        logger.info(f"{reason}: {message}")
    if done.children_written:
        logger.info(f"{done.children_written} child object(s) written")
    if done.wrote and done.status is not None:
        logger.info(f"status written: phase {done.status.get('phase')}")
    if done.error is not None:
        logger.warning(f"apply failed: {done.error}")
