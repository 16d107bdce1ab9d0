"""Where an object lives: a `Location` (scheme, bucket, key) and the URI forms a spec may use.

Pure values with no I/O, so the storage backends and their callers can share them without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kiln.api.errors import KilnInputError


@dataclass(frozen=True)
class Location:
    scheme: str  # "file" or "s3"
    bucket: str  # empty for files
    key: str  # absolute path for files

    @property
    def uri(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.key}"
        return f"file://{self.key}"

    def child(self, *parts: str) -> Location:
        tail = "/".join(p.strip("/") for p in parts if p)
        if self.scheme == "s3":
            key = f"{self.key.rstrip('/')}/{tail}" if self.key else tail
            return Location("s3", self.bucket, key)
        return Location("file", "", str(Path(self.key, tail)))


def parse_uri(uri: str, base_dir: Path | None = None) -> Location:
    """A plain path is relative to `base_dir` (the spec file's folder) or the working dir."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise KilnInputError(uri, "expected s3://BUCKET/KEY")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise KilnInputError(uri, "expected file:///ABSOLUTE/PATH (three slashes)")
        return Location("file", "", str(Path(parsed.path).resolve()))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter would be a Windows drive
        raise KilnInputError(
            uri,
            f"unsupported scheme {parsed.scheme!r}; expected a path, file://PATH or s3://BUCKET/KEY",
        )
    path = Path(uri)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return Location("file", "", str(path.resolve()))
