"""observe -> plan -> apply: the reads. Everything the plan needs, gathered from the operator's
watch caches and from object storage; no decisions here.

The cluster side costs no API call: nodes, Jobs and Deployments come from in-memory indexes
that Kopf keeps from watch streams (`ClusterView`). Only a failed Job's pod is read on demand,
for its termination message. The storage side reads the source and calibration identities on
every pass (their content may change under the same URI) but remembers what is immutable:
a complete artifact folder and a stored result never change under their content-addressed key.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kiln.api.errors import KilnError, KilnInputError, KilnTransientError
from kiln.api.layout import RESULT_FILE
from kiln.api.spec import OptimizedModel
from kiln.api.status import TargetStatus
from kiln.operator.config import OperatorConfig
from kiln.operator.observed import DeploymentState, JobState, Observed
from kiln.operator.plan import parse_status, request_keys
from kiln.operator.requests import artifacts_uri
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri


@dataclass(frozen=True)
class ClusterView:
    """One resource's slice of the watch caches, copied on the event loop."""

    gpu_types: dict[str, int]
    jobs: dict[str, JobState] = field(default_factory=dict)  # this resource's, by name
    deployments: dict[str, DeploymentState] = field(default_factory=dict)


def fingerprint(storage: Storage, model: OptimizedModel) -> str:
    """What identifies the source and calibration objects' content without downloading them:
    one HEAD for the source and one listing of the calibration folder."""
    source = parse_uri(model.spec.source.uri)
    parts = [f"{source.uri}={_named(storage.identity, source, 'spec.source.uri')}"]
    if model.spec.calibration is not None:
        root = parse_uri(model.spec.calibration.uri)
        listing = _named(storage.listing, root, "spec.calibration.uri")
        shards = [(loc, ident) for loc, ident in listing if loc.key.endswith(".npz")]
        if not shards:
            raise KilnInputError("spec.calibration.uri", f"no .npz shards under {root.uri}")
        parts += [f"{loc.uri}={ident}" for loc, ident in shards]
    return "fp-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _named(fn: Callable[[Location], Any], loc: Location, field_name: str) -> Any:
    """Call a storage read, naming the spec field in its error."""
    try:
        return fn(loc)
    except KilnError as exc:
        raise exc.renamed(f"{field_name} ({exc.where})") from None


class StoredResults:
    """Reads of the artifact store that may be remembered forever once positive: a manifest is
    written last and a key's content never changes, so "complete" stays true. Absences are
    never remembered (a running Job is about to fill them)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._lock = threading.Lock()
        self._complete: set[str] = set()
        self._results: dict[str, TargetStatus] = {}

    def complete(self, root: Location, key: str) -> bool:
        where = root.child(key).uri
        if where in self._complete:
            return True
        if self._store(root).manifest(key) is None:
            return False
        with self._lock:
            self._complete.add(where)
        return True

    def result(self, root: Location, key: str) -> TargetStatus | None:
        where = root.child(key).uri
        if where in self._results:
            return self._results[where]
        if not self.complete(root, key):
            return None
        result = TargetStatus.model_validate(self._store(root).read_json(key, RESULT_FILE))
        with self._lock:
            self._results[where] = result
        return result

    def _store(self, root: Location) -> ArtifactStore:
        # The operator only reads manifests and results, never downloads: no cache folder.
        return ArtifactStore(self.storage, root)


def observe(
    model: OptimizedModel,
    status: dict[str, Any] | None,
    config: OperatorConfig,
    cluster: ClusterView,
    stored: StoredResults,
    now: str,
    failed_job: Callable[[JobState], JobState] = lambda job: job,
) -> Observed:
    """`failed_job` adds what a failed Job's pod says (exit code, the builder's report): the
    one read that is not in the caches, made only for failed Jobs."""
    current = parse_status(status)
    jobs = {name: failed_job(job) if job.failed else job for name, job in cluster.jobs.items()}
    base = Observed(
        model=model,
        status=current,
        gpu_types=cluster.gpu_types,
        now=now,
        jobs=jobs,
        deployments=cluster.deployments,
    )
    uri = artifacts_uri(model, config)
    if uri is None:
        return base
    try:
        with_fp = replace(base, fingerprint=fingerprint(stored.storage, model))
        ekey, tkeys = request_keys(with_fp, config)
        root = parse_uri(uri)
        results: dict[str, TargetStatus] = {}
        for key in tkeys.values():
            found = stored.result(root, key)
            if found is not None:
                results[key] = found
        return replace(with_fp, export_done=stored.complete(root, ekey), results=results)
    except KilnTransientError as exc:
        return replace(base, storage_error=str(exc))
    except KilnInputError as exc:
        return replace(base, input_error=(exc.where, exc.message))
