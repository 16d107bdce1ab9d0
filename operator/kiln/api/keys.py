"""Content-addressed cache keys.

A key is the SHA-256 of a canonical JSON of everything that changes a result, so an unchanged
input never builds twice and any change always rebuilds. Keys are pure functions of their
inputs; the builder decides what goes in each.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kiln.api.version import VERSION

# A new release of Kiln may produce different artifacts for the same inputs: never reuse them.
BUILDER_VERSION = VERSION


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(kind: str, **parts: Any) -> str:
    """`kind-<24 hex>`: readable in a listing, collision-safe for this purpose."""
    digest = hashlib.sha256(canonical({"kind": kind, "builder": BUILDER_VERSION, **parts}).encode())
    return f"{kind}-{digest.hexdigest()[:24]}"
