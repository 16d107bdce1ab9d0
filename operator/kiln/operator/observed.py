"""What the plan reads (pure data): the resource, its status, and the cluster and storage as
observe found them."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.api.errors import ErrorKind
from kiln.api.report import JobReport
from kiln.api.spec import OptimizedModel
from kiln.api.status import OptimizedModelStatus, TargetStatus

FieldPath = tuple[str, ...]  # a path through an object's maps, ending at a value or a list


@dataclass(frozen=True)
class Applied:
    """What a child carries of Kiln's own writes, as the watch cache last saw it: enough to
    tell whether writing the desired object again could change anything (`kiln.operator.drift`)."""

    digest: str | None = None  # the annotation Kiln stamps: a hash of what it last applied
    foreign: frozenset[FieldPath] = frozenset()  # fields another writer set (not status)


@dataclass(frozen=True)
class JobState:
    name: str
    failed: bool = False
    # Pods that failed while the Job goes on (status.failed): the Job retries them itself.
    pod_failures: int = 0
    message: str = ""  # the builder's report or log tail, or the reason Kubernetes gave
    exit_code: int | None = None  # of the failed pod, when it is still there
    report: JobReport | None = None  # the failed pod's termination message, parsed
    applied: Applied = Applied()

    @property
    def failure(self) -> ErrorKind:
        """Why it failed: the builder's own word where it wrote a report, else its exit code
        (a crash when neither is known)."""
        if self.report is not None and self.report.error_kind is not None:
            return self.report.error_kind
        return ErrorKind.of_exit_code(self.exit_code)

    @property
    def retrying(self) -> bool:
        """Still running after one of its pods failed: the Job's own backoff is at work."""
        return not self.failed and self.pod_failures > 0


@dataclass(frozen=True)
class DeploymentState:
    name: str
    ready_replicas: int = 0
    engine_key: str | None = None
    replicas: int | None = None  # spec.replicas as set on the object
    applied: Applied = Applied()


@dataclass(frozen=True)
class ServiceState:
    name: str
    applied: Applied = Applied()


@dataclass(frozen=True)
class Observed:
    model: OptimizedModel
    status: OptimizedModelStatus | None
    gpu_types: dict[str, int]
    now: str
    fingerprint: str | None = None  # of the source and calibration objects in storage
    input_error: tuple[str, str] | None = None  # (field, message): the user must fix it
    storage_error: str | None = None  # transient: retried, not a failure
    export_done: bool = False
    results: dict[str, TargetStatus] = field(default_factory=dict)  # by request key
    jobs: dict[str, JobState] = field(default_factory=dict)
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    services: dict[str, Applied] = field(default_factory=dict)

    @property
    def previous_targets(self) -> list[TargetStatus]:
        return self.status.targets if self.status else []
