from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.api.errors import (
    ExitCode,
    KilnInputError,
    KilnTransientError,
    StorageUnavailableError,
)
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, S3Storage, Storage, parse_uri


def test_parse_uri_forms(tmp_path: Path) -> None:
    assert parse_uri("s3://bucket/a/b").uri == "s3://bucket/a/b"
    assert parse_uri("rel/x", base_dir=tmp_path).key == str(tmp_path / "rel" / "x")
    assert parse_uri(f"file://{tmp_path}/x").key == str(tmp_path / "x")
    with pytest.raises(
        KilnInputError, match="unsupported scheme 'gs'; expected a path, file://PATH"
    ):
        parse_uri("gs://bucket/x")
    with pytest.raises(KilnInputError, match="three slashes"):
        parse_uri("file://relative/x")


def test_publish_writes_manifest_last_and_half_written_is_not_ready(tmp_path: Path) -> None:
    store = ArtifactStore(
        Storage(), Location("file", "", str(tmp_path / "store")), tmp_path / "cache"
    )
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    assert store.manifest("onnx-1") is None
    # A build that died after uploading its file but before the manifest: not ready.
    Storage().store(model, store.location("onnx-2", "model.onnx"))
    assert store.manifest("onnx-2") is None
    store.publish(
        "onnx-1", {"model.onnx": model}, {"stage": "export"}, documents={"result.json": {"a": 1}}
    )
    manifest = store.manifest("onnx-1")
    assert manifest is not None
    assert set(manifest["files"]) == {"model.onnx", "result.json"}
    assert store.fetch("onnx-1", "model.onnx").read_bytes() == b"onnx bytes"
    assert store.read_json("onnx-1", "result.json") == {"a": 1}
    # Tampered content is caught by the manifest digest.
    Path(store.location("onnx-1", "model.onnx").key).write_bytes(b"other")
    with pytest.raises(RuntimeError, match="does not match its manifest digest"):
        store.fetch("onnx-1", "model.onnx")


def test_local_errors_name_the_file(tmp_path: Path) -> None:
    storage = Storage()
    with pytest.raises(KilnInputError, match="no such file"):
        storage.read_bytes(Location("file", "", str(tmp_path / "nope")))
    with pytest.raises(KilnInputError, match="no such folder"):
        storage.list(Location("file", "", str(tmp_path / "nope")))


def test_metadata_reads_and_local_fetch_need_no_folder(tmp_path: Path) -> None:
    store = ArtifactStore(Storage(), Location("file", "", str(tmp_path / "store")))
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    store.publish("k", {"model.onnx": model}, {}, documents={"result.json": {"a": 1}})
    assert store.manifest("k") is not None
    assert store.read_json("k", "result.json") == {"a": 1}
    # A local file is its own copy: nothing is downloaded, so no folder is needed either.
    assert store.fetch("k", "model.onnx") == Path(store.location("k", "model.onnx").key)


# -- S3 error mapping, against a stubbed client (no server, no network) ------------------------

S3_OBJECT = Location("s3", "bucket", "model.pt2")


@pytest.fixture
def stubbed_s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A botocore Stubber on the client every S3Storage creates: queue a response, then call."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y"
    )
    monkeypatch.setattr(S3Storage, "_new_client", lambda self: client)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def _fail(stubbed_s3: Any, method: str, code: str, status: int) -> None:
    stubbed_s3.add_client_error(method, service_error_code=code, http_status_code=status)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("ServiceUnavailable", 503),
        ("503", 503),
        ("InternalError", 500),
        ("Throttling", 400),
        ("RequestTimeout", 400),
        ("SomethingNew", 502),  # unknown, but the server's fault
    ],
)
def test_s3_server_trouble_is_transient(stubbed_s3: Any, code: str, status: int) -> None:
    _fail(stubbed_s3, "get_object", code, status)
    with pytest.raises(
        StorageUnavailableError, match=rf"^s3://bucket/model.pt2: .*\({code}\)"
    ) as err:
        Storage().read_bytes(S3_OBJECT)
    assert isinstance(err.value, KilnTransientError)
    assert not isinstance(err.value, KilnInputError)
    assert err.value.exit_code is ExitCode.TRANSIENT


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("NoSuchKey", 404, "no such object in storage"),
        ("NoSuchBucket", 404, "bucket 'bucket' does not exist"),
        ("AccessDenied", 403, r"access denied by the S3 server \(AccessDenied\)"),
        ("SomethingNew", 400, "S3 error SomethingNew"),  # unknown 4xx: retrying will not help
    ],
)
def test_s3_rejections_are_input_errors(
    stubbed_s3: Any, code: str, status: int, message: str
) -> None:
    _fail(stubbed_s3, "get_object", code, status)
    with pytest.raises(KilnInputError, match=message) as err:
        Storage().read_bytes(S3_OBJECT)
    assert not isinstance(err.value, KilnTransientError)
    assert err.value.exit_code is ExitCode.BAD_INPUT


def test_s3_exists_is_false_on_404_and_transient_on_503(stubbed_s3: Any) -> None:
    _fail(stubbed_s3, "head_object", "404", 404)
    _fail(stubbed_s3, "head_object", "503", 503)
    storage = Storage()
    assert not storage.exists(S3_OBJECT)
    with pytest.raises(StorageUnavailableError):
        storage.exists(S3_OBJECT)


def test_s3_fetch_without_a_folder_is_refused_before_any_request(stubbed_s3: Any) -> None:
    # The stub has no response queued: a request would fail the test with a different error.
    store = ArtifactStore(Storage(), Location("s3", "bucket", "artifacts"))
    with pytest.raises(RuntimeError, match="downloading needs a cache folder"):
        store.fetch("k", "model.onnx")
