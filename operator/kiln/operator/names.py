"""Deterministic child names and labels: the same resource and inputs always give the same
names, so a re-run reconcile (or a restarted operator) finds its children instead of
duplicating them."""

from __future__ import annotations

import hashlib
import re

LABEL_PREFIX = "kiln.dev"
MODEL_LABEL = f"{LABEL_PREFIX}/model"
COMPONENT_LABEL = f"{LABEL_PREFIX}/component"
TARGET_LABEL = f"{LABEL_PREFIX}/target"
STAGE_LABEL = f"{LABEL_PREFIX}/stage"
ENGINE_ANNOTATION = f"{LABEL_PREFIX}/engine-key"
REQUEST_ANNOTATION = f"{LABEL_PREFIX}/request-key"
# A hash of the child as Kiln last applied it (kiln.operator.drift): equal means no write.
APPLIED_ANNOTATION = f"{LABEL_PREFIX}/applied-hash"
# The field manager of every write Kiln makes to a child (server-side apply and scale).
FIELD_MANAGER = "kiln-operator"

_INVALID = re.compile(r"[^a-z0-9-]+")
MAX_NAME = 63


def slug(text: str) -> str:
    """A DNS-1123 label fragment: `NVIDIA-H100-80GB-HBM3` -> `nvidia-h100-80gb-hbm3`."""
    return _INVALID.sub("-", text.lower()).strip("-") or "x"


def bounded(*parts: str) -> str:
    """Join parts into a name of at most 63 characters; over-long names keep a hash suffix so
    they stay unique and stable."""
    name = "-".join(slug(p) for p in parts if p)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def short(key: str) -> str:
    """The hex tail of a cache key, shortened for names."""
    return key.rsplit("-", 1)[-1][:10]


def _retry(attempt: int) -> str:
    # Attempt 0 keeps the plain name; a Job retried after a transient failure gets `r1`, `r2`.
    return f"r{attempt}" if attempt else ""


def export_job(model: str, request_key: str, attempt: int = 0) -> str:
    return bounded(model, "export", short(request_key), _retry(attempt))


def build_job(model: str, target: str, request_key: str, attempt: int = 0) -> str:
    return bounded(model, "build", target, short(request_key), _retry(attempt))


def request_configmap(model: str, request_key: str) -> str:
    return bounded(model, "request", short(request_key))


def server(model: str, target: str) -> str:
    return bounded(model, target)


def labels(model: str, component: str, target: str | None = None) -> dict[str, str]:
    out = {
        MODEL_LABEL: slug(model),
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": "kiln",
        "app.kubernetes.io/name": "kiln",
    }
    if target is not None:
        out[TARGET_LABEL] = slug(target)
    return out
