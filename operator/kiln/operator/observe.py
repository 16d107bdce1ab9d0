"""observe -> plan -> apply: the reads. Everything the plan needs, gathered from the operator's
watch caches and from object storage; no decisions here.

The cluster side costs no API call: nodes, Jobs and Deployments come from in-memory indexes
that Kopf keeps from watch streams (`ClusterView`). Only a failed Job's pod is read on demand,
for its termination message. The storage side reads the source and calibration identities
(their content may change under the same URI) at most once per `source_check_seconds` per URI,
and remembers what is immutable forever: a complete artifact folder and a stored result never
change under their content-addressed key.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kiln.api.errors import KilnError, KilnInputError, KilnTransientError
from kiln.api.layout import RESULT_FILE
from kiln.api.spec import OptimizedModel
from kiln.api.status import TargetStatus
from kiln.operator.config import OperatorConfig
from kiln.operator.observed import Applied, DeploymentState, JobState, Observed
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
    services: dict[str, Applied] = field(default_factory=dict)


def fingerprint(storage: Storage, model: OptimizedModel) -> str:
    """What identifies the source, calibration and validation objects' content without
    downloading them: one HEAD for the source and one listing per folder of shards."""
    source = parse_uri(model.spec.source.uri)
    parts = [f"{source.uri}={_named(storage.identity, source, 'spec.source.uri')}"]
    if model.spec.calibration is not None:
        parts += _shards(storage, model.spec.calibration.uri, "spec.calibration.uri")
    if model.spec.accuracy.uri is not None:
        parts += _shards(storage, model.spec.accuracy.uri, "spec.accuracy.uri")
    return "fp-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _shards(storage: Storage, uri: str, field_name: str) -> list[str]:
    root = parse_uri(uri)
    listing = _named(storage.listing, root, field_name)
    shards = [(loc, ident) for loc, ident in listing if loc.key.endswith(".npz")]
    if not shards:
        raise KilnInputError(field_name, f"no .npz shards under {root.uri}")
    return [f"{loc.uri}={ident}" for loc, ident in shards]


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

    def __init__(self, storage: Storage, clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self._clock = clock
        self._lock = threading.Lock()
        self._complete: set[str] = set()
        self._results: dict[str, TargetStatus] = {}
        self._fingerprints: dict[tuple[str, str | None, str | None], tuple[str, float]] = {}

    def fingerprint(self, model: OptimizedModel, max_age: float) -> str:
        """The source's, calibration set's and validation set's identity, read from storage at
        most once per `max_age` seconds per set of URIs, whichever resource asks: many
        resources share a source, and an object replaced under the same URI is noticed within
        `max_age` (plus the wait until the resource's next pass). Failures are not remembered."""
        calibration = model.spec.calibration
        key = (
            model.spec.source.uri,
            calibration.uri if calibration else None,
            model.spec.accuracy.uri,
        )
        now = self._clock()
        known = self._fingerprints.get(key)
        if known is not None and now - known[1] < max_age:
            return known[0]
        value = fingerprint(self.storage, model)
        with self._lock:
            self._fingerprints[key] = (value, now)
        return value

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
    one read that is not in the caches, made only for failed Jobs and for Jobs retrying a
    failed pod (so an outage shows while the Job's own backoff rides it out)."""
    current = parse_status(status)
    jobs = {
        name: failed_job(job) if job.failed or job.retrying else job
        for name, job in cluster.jobs.items()
    }
    base = Observed(
        model=model,
        status=current,
        gpu_types=cluster.gpu_types,
        now=now,
        jobs=jobs,
        deployments=cluster.deployments,
        services=cluster.services,
    )
    uri = artifacts_uri(model, config)
    if uri is None:
        return base
    try:
        with_fp = replace(base, fingerprint=stored.fingerprint(model, config.source_check_seconds))
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
