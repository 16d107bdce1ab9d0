"""Object storage behind one small interface: local paths, file:// and s3:// URIs.

`ObjectStorage` is the interface; `FileStorage` (kiln.storage.files) and `S3Storage`
(kiln.storage.s3) implement it, and `Storage`, what callers construct, routes each call to one
of them by the location's scheme, so a caller never branches on where an object lives.

Failures are Kiln errors naming the location: `KilnInputError` when the location is wrong
(permanent), `StorageUnavailableError` (a `KilnTransientError`) when storage cannot be reached
for now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from kiln.storage.files import FileStorage, atomic_write, file_identity
from kiln.storage.location import Location, parse_uri
from kiln.storage.s3 import S3Storage, s3_endpoint

__all__ = [
    "FileStorage",
    "Location",
    "ObjectStorage",
    "S3Storage",
    "Storage",
    "atomic_write",
    "file_identity",
    "parse_uri",
    "s3_endpoint",
]


class ObjectStorage(Protocol):
    """Reads and writes whole objects. Writes are atomic: a reader never sees half an object."""

    def exists(self, loc: Location) -> bool:
        """Whether the object is there (absence is an answer, not an error)."""
        ...

    def read_bytes(self, loc: Location) -> bytes: ...

    def write_bytes(self, loc: Location, data: bytes) -> None: ...

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        """(object, identity) under a prefix, sorted by key. The identity changes whenever the
        content does (S3: size and ETag; files: size and modification time), so a caller can
        tell a changed object from one listing, without a request per object."""
        ...

    def identity(self, loc: Location) -> str:
        """What `listing` reports for one object (a HEAD request on S3)."""
        ...

    def fetch(self, loc: Location, cache_dir: Path | None) -> Path:
        """A local file with the object's content: the file itself, or a download into
        `cache_dir`. Only a download needs the folder; asking for one without it is a bug
        (RuntimeError)."""
        ...

    def store(self, src: Path, loc: Location) -> None:
        """Upload (or copy) a local file to `loc`."""
        ...


class Storage:
    """The `ObjectStorage` callers use: each call goes to the backend for the location's
    scheme. `max_connections` sizes the S3 connection pool (the operator reads in parallel)."""

    def __init__(self, max_connections: int = 10) -> None:
        # Annotated with the protocol so mypy checks that both backends implement it.
        self._backends: dict[str, ObjectStorage] = {
            "file": FileStorage(),
            "s3": S3Storage(max_connections),
        }

    def _backend(self, loc: Location) -> ObjectStorage:
        backend = self._backends.get(loc.scheme)
        if backend is None:  # parse_uri never makes one; a hand-built Location might
            raise ValueError(f"{loc.uri}: no storage for scheme {loc.scheme!r}")
        return backend

    def exists(self, loc: Location) -> bool:
        return self._backend(loc).exists(loc)

    def read_bytes(self, loc: Location) -> bytes:
        return self._backend(loc).read_bytes(loc)

    def write_bytes(self, loc: Location, data: bytes) -> None:
        self._backend(loc).write_bytes(loc, data)

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        return self._backend(prefix).listing(prefix)

    def identity(self, loc: Location) -> str:
        return self._backend(loc).identity(loc)

    def list(self, prefix: Location) -> list[Location]:
        """Objects directly or indirectly under a folder-like prefix, sorted by key: the
        listing without identities, the same for every backend."""
        return [loc for loc, _ in self.listing(prefix)]

    def fetch(self, loc: Location, cache_dir: Path | None) -> Path:
        return self._backend(loc).fetch(loc, cache_dir)

    def store(self, src: Path, loc: Location) -> None:
        self._backend(loc).store(src, loc)
