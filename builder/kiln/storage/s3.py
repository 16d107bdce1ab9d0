"""Object storage on S3 or an S3-compatible server, through boto3.

boto3 reads the usual environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 for S3-compatible servers). Every
failure becomes a Kiln error naming the URI, so the user sees which field or object is wrong
rather than a botocore traceback, and of the kind that says what to do about it:

- `StorageUnavailableError` (transient, retried): the endpoint cannot be reached, a timeout,
  throttling, or the server failing (5xx). Waiting helps.
- `KilnInputError` (permanent): no such object or bucket, access denied, no credentials, or
  any other request the server rejects (4xx). Waiting does not help; the spec must change.

botocore is imported only when an S3 location is used, so file-only runs never load it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from kiln.api.errors import KilnError, KilnInputError, StorageUnavailableError
from kiln.storage.files import atomic_write
from kiln.storage.location import Location

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
# The server is failing or asks the client to back off: the same request succeeds later.
_BUSY = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequests",
        "429",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
        "500",
        "502",
        "503",
        "504",
    }
)


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _client_error(loc: Location, exc: ClientError) -> KilnError:
    """An error the server answered with, by its code (and HTTP status for unknown codes)."""
    code = _code(exc)
    if code in _MISSING:
        return KilnInputError(loc.uri, "no such object in storage")
    if code == "NoSuchBucket":
        return KilnInputError(loc.uri, f"bucket {loc.bucket!r} does not exist")
    if code in _DENIED:
        return KilnInputError(loc.uri, f"access denied by the S3 server ({code})")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    # An unknown 5xx is the server's fault and usually passes; an unknown 4xx is a request
    # the server will keep rejecting, so retrying it would only hide the problem.
    if code in _BUSY or status >= 500:
        return StorageUnavailableError(
            loc.uri, f"the S3 server is unavailable or throttling ({code}): {exc}"
        )
    return KilnInputError(loc.uri, f"S3 error {code}: {exc}")


def s3_error(loc: Location, exc: Exception) -> KilnError:
    """The Kiln error for a boto3/botocore failure on `loc`."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
    )

    # boto3's transfer manager (upload_file) wraps the server's answer; classify that instead.
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__
    # ConnectionError covers endpoint and connect-timeout errors; HTTPClientError covers read
    # timeouts and dropped connections. Downloads that kept failing that way end in
    # RetriesExceededError.
    if isinstance(exc, ConnectionError | HTTPClientError | RetriesExceededError):
        where = s3_endpoint() or "the default AWS endpoint"
        return StorageUnavailableError(
            loc.uri, f"cannot reach the S3 endpoint {where} (AWS_ENDPOINT_URL): {exc}"
        )
    if isinstance(exc, NoCredentialsError):
        return KilnInputError(
            loc.uri, "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(exc, ClientError):
        return _client_error(loc, exc)
    return KilnInputError(loc.uri, f"storage error: {exc}")


class S3Storage:
    """The `ObjectStorage` operations on s3:// locations, safe to share between threads."""

    def __init__(self, max_connections: int = 10) -> None:
        self._s3: S3Client | None = None
        self._lock = threading.Lock()  # the operator reads from many threads at once
        self._max_connections = max_connections

    def _client(self) -> S3Client:
        if self._s3 is not None:
            return self._s3
        # boto3's default session is not thread-safe while it creates a client.
        with self._lock:
            if self._s3 is None:
                self._s3 = self._new_client()
            return self._s3

    def _new_client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        # Short timeouts and few retries: an unreachable endpoint must fail in seconds with a
        # clear message, not hang a builder Job.
        config = Config(
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
            max_pool_connections=self._max_connections,
        )
        return boto3.client("s3", endpoint_url=s3_endpoint(), config=config)

    def _call(self, loc: Location, request: Callable[[S3Client], T]) -> T:
        """Run one request, with any boto failure (client creation included) mapped."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return request(self._client())
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            raise s3_error(loc, exc) from None

    def exists(self, loc: Location) -> bool:
        from botocore.exceptions import ClientError

        def head(s3: S3Client) -> bool:
            try:
                s3.head_object(Bucket=loc.bucket, Key=loc.key)
            except ClientError as exc:
                if _code(exc) in _MISSING:  # absent is an answer here, not an error
                    return False
                raise
            return True

        return self._call(loc, head)

    def read_bytes(self, loc: Location) -> bytes:
        return self._call(
            loc, lambda s3: s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        )

    def write_bytes(self, loc: Location, data: bytes) -> None:
        self._call(loc, lambda s3: s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=data))

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        # The identity is size and ETag: both come with the listing, so no request per object.
        key = prefix.key.rstrip("/") + "/" if prefix.key else ""

        def collect(s3: S3Client) -> list[tuple[Location, str]]:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=key)
            return [
                (
                    Location("s3", prefix.bucket, item["Key"]),
                    f"{item.get('Size')}:{item.get('ETag')}",
                )
                for page in pages
                for item in page.get("Contents", [])
            ]

        return sorted(self._call(prefix, collect), key=lambda entry: entry[0].key)

    def identity(self, loc: Location) -> str:
        head = self._call(loc, lambda s3: s3.head_object(Bucket=loc.bucket, Key=loc.key))
        return f"{head.get('ContentLength')}:{head.get('ETag')}"

    def fetch(self, loc: Location, cache_dir: Path | None) -> Path:
        if cache_dir is None:
            # A caller that only reads metadata has no folder; asking it to download is a bug.
            raise RuntimeError(f"{loc.uri}: downloading needs a cache folder, and none was given")
        dest = cache_dir / loc.bucket / loc.key
        with atomic_write(dest) as tmp:
            self._call(
                loc, lambda s3: s3.download_file(Bucket=loc.bucket, Key=loc.key, Filename=str(tmp))
            )
        return dest

    def store(self, src: Path, loc: Location) -> None:
        self._call(
            loc, lambda s3: s3.upload_file(Filename=str(src), Bucket=loc.bucket, Key=loc.key)
        )
