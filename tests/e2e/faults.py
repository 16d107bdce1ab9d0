"""What the fault tests (test_operator_faults.py, test_operator_chaos.py) share: an operator
restarted the way a kubelet restarts its container, and the ledger of what ran on the cluster
(Jobs by request, builder pods by exit code, children and their owners)."""

from __future__ import annotations

import signal
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from kiln.api.errors import ExitCode
from kiln.operator.names import REQUEST_ANNOTATION
from tests.e2e.test_operator import GROUP, PLURAL, VERSION, Operator

# What a kubelet restarts and the test expects: a lost Lease or an unreachable API server at
# start (exit 3), and the SIGKILLs the test sends itself.
EXPECTED_EXITS = (int(ExitCode.TRANSIENT), -signal.SIGKILL)


@dataclass
class Restarting(Operator):
    """restartPolicy Always: an expected exit is followed by a start, as the kubelet restarts
    the container; any other exit fails the test with the log's tail."""

    exits: list[int] = field(default_factory=list)

    def check_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        if code not in EXPECTED_EXITS:
            super().check_alive()
        self.exits.append(code)
        self.start()

    def kill(self) -> None:
        """SIGKILL, as when the node dies; the next check_alive starts it again."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()


@dataclass(frozen=True)
class Ledger:
    """What ran in the namespaces: Jobs per (namespace, resource, request key), builder pods'
    exit codes, and children whose controlling owner is not a live OptimizedModel."""

    jobs: Counter[tuple[str, str, str]]
    pod_exits: Counter[int]
    orphans: list[str]

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.jobs.values() if n > 1)


def ledger(api: Any, namespaces: list[str]) -> Ledger:
    batch, core, apps = client.BatchV1Api(api), client.CoreV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    jobs: Counter[tuple[str, str, str]] = Counter()
    exits: Counter[int] = Counter()
    orphans: list[str] = []
    for ns in namespaces:
        live = {
            m["metadata"]["uid"]
            for m in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
        }
        job_list = batch.list_namespaced_job(ns).items
        children = [
            *job_list,
            *apps.list_namespaced_deployment(ns).items,
            *core.list_namespaced_service(ns).items,
            *core.list_namespaced_config_map(
                ns, label_selector="app.kubernetes.io/managed-by=kiln"
            ).items,
        ]
        for child in children:
            owners = {r.uid for r in child.metadata.owner_references or [] if r.controller}
            if not owners & live:
                orphans.append(f"{ns}/{child.kind or type(child).__name__}/{child.metadata.name}")
        for job in job_list:
            owner = next(r.name for r in job.metadata.owner_references or [] if r.controller)
            key = (job.metadata.annotations or {}).get(REQUEST_ANNOTATION, "?")
            jobs[(ns, owner, key)] += 1
        pods = core.list_namespaced_pod(ns, label_selector="kiln.dev/component=builder").items
        for pod in pods:
            for cs in pod.status.container_statuses or []:
                if cs.state and cs.state.terminated:
                    exits[cs.state.terminated.exit_code] += 1
    return Ledger(jobs, exits, orphans)
