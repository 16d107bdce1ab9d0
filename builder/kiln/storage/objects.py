"""Object storage behind one small interface: local paths, file:// and s3:// URIs.

S3 goes through boto3 with the usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for S3-compatible servers). Every
failure is turned into a KilnInputError naming the URI, so the user sees which field or file is
wrong rather than a botocore traceback.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kiln.api.errors import KilnInputError, StorageUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


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
        raise KilnInputError(uri, f"unsupported scheme {parsed.scheme!r}; expected s3://, file://")
    path = Path(uri)
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return Location("file", "", str(path.resolve()))


@contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temporary file next to `dest`, renamed over it only on success: a reader never sees
    half a file, and a failed write leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


class Storage:
    """Reads and writes whole objects. Writes are atomic: a reader never sees half a file."""

    def __init__(self, max_connections: int = 10) -> None:
        self._s3: S3Client | None = None
        self._lock = threading.Lock()  # the operator reads from many threads at once
        self._max_connections = max_connections

    # -- S3 plumbing -------------------------------------------------------------------------

    def _client(self) -> S3Client:
        if self._s3 is not None:
            return self._s3
        # boto3's default session is not thread-safe while it creates a client.
        with self._lock:
            if self._s3 is not None:
                return self._s3
            import boto3
            from botocore.config import Config

            # Short timeouts and few retries: an unreachable endpoint must fail in seconds
            # with a clear message, not hang a builder Job.
            config = Config(
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 3, "mode": "standard"},
                s3={"addressing_style": "path"},
                max_pool_connections=self._max_connections,
            )
            self._s3 = boto3.client("s3", endpoint_url=s3_endpoint(), config=config)
            return self._s3

    def _s3_error(self, loc: Location, exc: Exception) -> KilnInputError:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        if isinstance(exc, EndpointConnectionError | ConnectionError | ReadTimeoutError):
            where = s3_endpoint() or "the default AWS endpoint"
            return StorageUnavailableError(
                loc.uri, f"cannot reach the S3 endpoint {where} (AWS_ENDPOINT_URL): {exc}"
            )
        if isinstance(exc, NoCredentialsError):
            return KilnInputError(
                loc.uri, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                return KilnInputError(loc.uri, "no such object in storage")
            if code == "NoSuchBucket":
                return KilnInputError(loc.uri, f"bucket {loc.bucket!r} does not exist")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return KilnInputError(loc.uri, f"access denied by the S3 server ({code})")
            return KilnInputError(loc.uri, f"S3 error {code}: {exc}")
        return KilnInputError(loc.uri, f"storage error: {exc}")

    def _s3_call(self, loc: Location, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self._s3_error(loc, exc) from None

    # -- public interface ---------------------------------------------------------------------

    def exists(self, loc: Location) -> bool:
        if loc.scheme == "file":
            return Path(loc.key).is_file()
        from botocore.exceptions import ClientError

        try:
            self._client().head_object(Bucket=loc.bucket, Key=loc.key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._s3_error(loc, exc) from None
        except Exception as exc:
            raise self._s3_error(loc, exc) from None
        return True

    def head(self, loc: Location) -> dict[str, Any]:
        """Object metadata (ContentLength, ETag) without its content."""
        result: dict[str, Any] = self._s3_call(
            loc, self._client().head_object, Bucket=loc.bucket, Key=loc.key
        )
        return result

    def read_bytes(self, loc: Location) -> bytes:
        if loc.scheme == "file":
            try:
                return Path(loc.key).read_bytes()
            except FileNotFoundError:
                raise KilnInputError(loc.key, "no such file") from None
            except OSError as exc:
                raise KilnInputError(loc.key, f"cannot read: {exc.strerror}") from None
        body = self._s3_call(loc, self._client().get_object, Bucket=loc.bucket, Key=loc.key)
        data: bytes = body["Body"].read()
        return data

    def write_bytes(self, loc: Location, data: bytes) -> None:
        if loc.scheme == "file":
            with _atomic(Path(loc.key)) as tmp:
                tmp.write_bytes(data)
            return
        self._s3_call(loc, self._client().put_object, Bucket=loc.bucket, Key=loc.key, Body=data)

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        """(object, identity) under a prefix, sorted by key. The identity changes whenever the
        content does (S3: size and ETag; files: size and modification time), so a caller can
        tell a changed object from one listing, without a request per object."""
        if prefix.scheme == "file":
            root = Path(prefix.key)
            if not root.is_dir():
                raise KilnInputError(prefix.key, "no such folder")
            return [
                (Location("file", "", str(p)), file_identity(p))
                for p in sorted(root.rglob("*"))
                if p.is_file()
            ]
        key = prefix.key.rstrip("/") + "/" if prefix.key else ""
        paginator = self._client().get_paginator("list_objects_v2")
        found: list[tuple[Location, str]] = []
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in paginator.paginate(Bucket=prefix.bucket, Prefix=key):
                for item in page.get("Contents", []):
                    identity = f"{item.get('Size')}:{item.get('ETag')}"
                    found.append((Location("s3", prefix.bucket, item["Key"]), identity))
        except (BotoCoreError, ClientError) as exc:
            raise self._s3_error(prefix, exc) from None
        return sorted(found, key=lambda entry: entry[0].key)

    def identity(self, loc: Location) -> str:
        """What `listing` reports for one object (a HEAD request on S3)."""
        if loc.scheme == "file":
            path = Path(loc.key)
            if not path.is_file():
                raise KilnInputError(loc.key, "no such file")
            return file_identity(path)
        head = self.head(loc)
        return f"{head.get('ContentLength')}:{head.get('ETag')}"

    def list(self, prefix: Location) -> list[Location]:
        """Objects directly or indirectly under a folder-like prefix, sorted by key."""
        return [loc for loc, _ in self.listing(prefix)]

    def fetch(self, loc: Location, cache_dir: Path) -> Path:
        """A local file with the object's content: the file itself, or a download."""
        if loc.scheme == "file":
            path = Path(loc.key)
            if not path.is_file():
                raise KilnInputError(loc.key, "no such file")
            return path
        dest = cache_dir / loc.bucket / loc.key
        with _atomic(dest) as tmp:
            self._s3_call(
                loc, self._client().download_file, Bucket=loc.bucket, Key=loc.key, Filename=str(tmp)
            )
        return dest

    def store(self, src: Path, loc: Location) -> None:
        if loc.scheme == "file":
            with _atomic(Path(loc.key)) as tmp:
                shutil.copyfile(src, tmp)
            return
        self._s3_call(
            loc, self._client().upload_file, Filename=str(src), Bucket=loc.bucket, Key=loc.key
        )
