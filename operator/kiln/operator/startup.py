"""Start the operator: build its context once, then run Kopf with it.

The handlers read everything from Kopf's `memo` (`handlers.OperatorContext`), so what the
process shares is built here, in one place, before Kopf starts: nothing is assigned to a
module or a class at run time, and a test can build a context of its own."""

from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kopf

from kiln.operator.apply import Clients
from kiln.operator.config import OperatorConfig
from kiln.operator.connection import load_configuration

# Importing the handlers registers them with Kopf, which `run` needs anyway.
from kiln.operator.handlers import OperatorContext
from kiln.operator.leader import LeaderElection, LeaseElector
from kiln.operator.observe import StoredResults
from kiln.operator.reconcile import Deps
from kiln.storage.objects import Storage


def build_context(config: OperatorConfig, kubeconfig: Path | None) -> OperatorContext:
    """API clients, storage and worker threads sized to `config.workers`: each reconcile
    thread holds one API and one storage connection at a time, and pools that are too small
    make threads wait on each other (urllib3 and botocore block, or drop connections)."""
    from kubernetes import client

    connections = config.workers + 2
    configuration = load_configuration(kubeconfig)
    configuration.connection_pool_maxsize = connections
    clients = Clients.create(client.ApiClient(configuration))
    stored = StoredResults(Storage(max_connections=connections))
    return OperatorContext(
        kubeconfig=kubeconfig,
        deps=Deps(config, clients, stored),
        executor=ThreadPoolExecutor(config.workers, thread_name_prefix="reconcile"),
    )


def run(
    context: OperatorContext,
    namespaces: Collection[str] = (),
    liveness: str | None = None,
    log_json: bool = False,
    leader: LeaderElection | None = None,
) -> None:
    """Run Kopf until it stops (a signal), cluster-wide unless `namespaces` are given. With
    `leader`, only once this replica holds the Lease (kiln.operator.leader): until then it is a
    standby that answers the liveness probe and writes nothing."""
    kopf.configure(
        verbose=False, log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.PLAIN
    )
    elector = _lead(context, leader, liveness) if leader is not None else None
    try:
        kopf.run(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,
            memo=context.memo(),
        )
    finally:
        # Passes still queued are dropped (an operator that starts again reconciles every
        # resource anyway); the running ones finish, so none stops halfway through its writes.
        context.executor.shutdown(wait=True, cancel_futures=True)
        # Only then the Lease: the standby must not start while this replica still writes.
        if elector is not None:
            elector.release()


def _lead(context: OperatorContext, leader: LeaderElection, liveness: str | None) -> LeaseElector:
    """Block until leader, then renew in the background. The elector has an API client of its
    own, so a renewal never queues behind busy reconcile passes for a pooled connection."""
    from kubernetes import client

    api = client.CoordinationV1Api(client.ApiClient(load_configuration(context.kubeconfig)))
    elector = LeaseElector(api, leader)
    elector.acquire(liveness)
    elector.start_renewing()
    return elector
