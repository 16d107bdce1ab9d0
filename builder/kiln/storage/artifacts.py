"""Content-addressed artifact folders: `ROOT/<cache key>/<files>` plus `manifest.json`.

The manifest is written last, after every file it lists, so an interrupted build leaves a
folder without a manifest, which is never reported as built and is simply rebuilt next time.

Reading manifests and JSON documents needs no local folder; only `fetch` of an object that is
not already a local file does, so a reader that never downloads (the operator, a server
loading its result) builds the store without one.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from kiln.storage.objects import Location, ObjectStorage

MANIFEST = "manifest.json"


def file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return "sha256:" + sha.hexdigest()


class ArtifactStore:
    def __init__(
        self, storage: ObjectStorage, root: Location, cache_dir: Path | None = None
    ) -> None:
        self.storage = storage
        self.root = root
        self.cache_dir = cache_dir

    def location(self, key: str, name: str = "") -> Location:
        return self.root.child(key, name)

    def manifest(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete artifact, or None when absent or half-written."""
        loc = self.location(key, MANIFEST)
        if not self.storage.exists(loc):
            return None
        try:
            data = json.loads(self.storage.read_bytes(loc))
        except json.JSONDecodeError:
            return None  # torn or foreign file: treat as not built
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        return data

    def publish(
        self,
        key: str,
        files: dict[str, Path],
        meta: dict[str, Any],
        documents: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload files and JSON documents, then the manifest that marks them complete."""
        digests: dict[str, str] = {}
        for name, path in files.items():
            self.storage.store(path, self.location(key, name))
            digests[name] = file_digest(path)
        for name, doc in (documents or {}).items():
            data = json.dumps(doc, indent=2, sort_keys=True).encode()
            self.storage.write_bytes(self.location(key, name), data)
            digests[name] = "sha256:" + hashlib.sha256(data).hexdigest()
        manifest = {"key": key, "files": digests, "meta": meta, "createdAt": time.time()}
        self.storage.write_bytes(
            self.location(key, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode()
        )
        return manifest

    def fetch(self, key: str, name: str) -> Path:
        """A local copy of one file, checked against the digest the manifest recorded.
        Raises RuntimeError when the file must be downloaded and the store has no cache_dir."""
        path = self.storage.fetch(self.location(key, name), self.cache_dir)
        manifest = self.manifest(key)
        expected = (manifest or {}).get("files", {}).get(name)
        if expected is not None and file_digest(path) != expected:
            raise RuntimeError(
                f"{self.location(key, name).uri}: content does not match its manifest digest"
            )
        return path

    def read_json(self, key: str, name: str) -> Any:
        return json.loads(self.storage.read_bytes(self.location(key, name)))
