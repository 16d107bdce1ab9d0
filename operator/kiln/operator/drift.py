"""Which of the desired children to write (pure): only those that differ from what the watch
cache holds, so a pass over a settled resource sends no write at all.

The plan renders the whole desired state on every pass (a missed event or a restart only
delays convergence); this step keeps that property and drops the writes that cannot change
anything. A child needs a write when:

- it is not in the cache (absent, or deleted by hand);
- its `kiln.dev/applied-hash` annotation differs from the hash of the rendered object (the
  spec changed, or a new operator renders it differently): the usual way, since comparing
  rendered objects with served ones field by field trips over the API server's defaults and
  normalised quantities;
- someone else changed it (drift): another field manager owns a field Kiln sets. Server-side
  apply records every writer's fields in `managedFields`, and a `kubectl edit`, `scale` or
  `apply --force-conflicts` of a field Kiln owns moves that field to the other writer, so
  the overlap names exactly the hand edits of Kiln's fields. Writes of the status
  subresource (the controllers') and of fields Kiln never sets (the Deployment controller's
  revision annotation) are no drift. Kiln's forced apply takes the fields back, which clears
  the overlap, so a corrected child costs one write.

Request ConfigMaps are not watched (Kopf watches every object of a kind, and clusters hold
many ConfigMaps): one is written with the Job that mounts it, which the cache does watch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.operator.names import APPLIED_ANNOTATION, FIELD_MANAGER
from kiln.operator.observed import Applied, FieldPath, Observed

Manifest = dict[str, Any]
_LIST_KEYS = ("k:", "v:", "i:")  # fieldsV1 keys of list items: a path ends at its list


@dataclass(frozen=True)
class Writes:
    """What a pass sends: the children to apply (stamped) and the Deployments to scale to 0."""

    apply: list[Manifest] = field(default_factory=list)
    scale_to_zero: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.apply) + len(self.scale_to_zero)


def digest(manifest: Manifest) -> str:
    """A stable hash of a rendered child, without its own annotation."""
    annotations = manifest["metadata"].get("annotations") or {}
    own = {k: v for k, v in annotations.items() if k != APPLIED_ANNOTATION}
    text = json.dumps(_annotated(manifest, own), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stamped(manifest: Manifest) -> Manifest:
    """The manifest with its hash annotation, as it is applied (it shares all but its
    metadata with `manifest`, which is left as it was)."""
    annotations = manifest["metadata"].get("annotations") or {}
    return _annotated(manifest, {**annotations, APPLIED_ANNOTATION: digest(manifest)})


def _annotated(manifest: Manifest, annotations: dict[str, str]) -> Manifest:
    """A shallow copy of `manifest` with these annotations; none: no annotation map at all,
    so a rendering without annotations hashes the same stamped or not."""
    meta = {k: v for k, v in manifest["metadata"].items() if k != "annotations"}
    if annotations:
        meta["annotations"] = annotations
    return {**manifest, "metadata": meta}


def applied_of(body: Mapping[str, Any]) -> Applied:
    """What the cache keeps of a child: its hash annotation and the fields others set."""
    meta = body.get("metadata") or {}
    return Applied(
        digest=(meta.get("annotations") or {}).get(APPLIED_ANNOTATION),
        foreign=foreign_fields(meta.get("managedFields") or []),
    )


def foreign_fields(entries: list[Mapping[str, Any]]) -> frozenset[FieldPath]:
    """Fields of the object (not its status) that a writer other than Kiln owns."""
    paths: set[FieldPath] = set()
    for entry in entries:
        if entry.get("manager") == FIELD_MANAGER or entry.get("subresource") == "status":
            continue
        paths.update(_owned(entry.get("fieldsV1") or {}, ()))
    return frozenset(paths)


def _owned(fields: Mapping[str, Any], at: FieldPath) -> Iterator[FieldPath]:
    for key, sub in fields.items():
        if key == ".":
            continue  # "this map exists": no value of its own
        if key.startswith(_LIST_KEYS):
            yield at  # an item of a list: Kiln applies lists whole, so the list is the field
        elif key.startswith("f:"):
            path = (*at, key[2:])
            if sub:
                yield from _owned(sub, path)
            else:
                yield path


def manifest_fields(manifest: Mapping[str, Any], at: FieldPath = ()) -> Iterator[FieldPath]:
    """The paths a manifest sets, down to each value or list."""
    for key, value in manifest.items():
        path = (*at, key)
        if isinstance(value, Mapping) and value:
            yield from manifest_fields(value, path)
        else:
            yield path


def overlaps(ours: frozenset[FieldPath], theirs: frozenset[FieldPath]) -> bool:
    """Whether any field of theirs is one of ours, inside one, or holds one."""
    if not theirs:
        return False
    prefixes = {p[:n] for p in ours for n in range(1, len(p) + 1)}
    return any(t in prefixes or any(t[:n] in ours for n in range(1, len(t))) for t in theirs)


def needs_write(manifest: Manifest, seen: Applied | None) -> bool:
    """`manifest` is stamped; `seen` is the cache's record of the child, None if absent."""
    if seen is None:
        return True
    if seen.digest != manifest["metadata"]["annotations"][APPLIED_ANNOTATION]:
        return True
    return overlaps(frozenset(manifest_fields(manifest)), seen.foreign)


def seen_of(observed: Observed, kind: str, name: str) -> Applied | None:
    if kind == "Job":
        job = observed.jobs.get(name)
        return job.applied if job is not None else None
    if kind == "Deployment":
        deployment = observed.deployments.get(name)
        return deployment.applied if deployment is not None else None
    if kind == "Service":
        return observed.services.get(name)
    raise ValueError(f"no cache holds {kind} objects")


def writes(desired: list[Manifest], scale_to_zero: list[str], observed: Observed) -> Writes:
    """The writes a pass must send for its desired children, in their order."""
    stamps = [stamped(m) for m in desired]
    changed = [
        m["kind"] != "ConfigMap" and needs_write(m, seen_of(observed, m["kind"], _name(m)))
        for m in stamps
    ]
    jobs = (m for m, write in zip(stamps, changed, strict=True) if write and m["kind"] == "Job")
    mounted = {name for job in jobs for name in _configmaps(job)}
    apply = [
        m
        for m, write in zip(stamps, changed, strict=True)
        if write or (m["kind"] == "ConfigMap" and _name(m) in mounted)
    ]
    scale = [
        name
        for name in scale_to_zero
        if name in observed.deployments and observed.deployments[name].replicas != 0
    ]
    return Writes(apply, scale)


def _name(manifest: Manifest) -> str:
    name: str = manifest["metadata"]["name"]
    return name


def _configmaps(job: Manifest) -> Iterator[str]:
    for volume in job["spec"]["template"]["spec"].get("volumes") or []:
        if "configMap" in volume:
            yield volume["configMap"]["name"]
