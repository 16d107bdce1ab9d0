"""Storage against a real S3-compatible server (moto's server mode on 127.0.0.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.api.errors import KilnInputError, KilnTransientError, StorageUnavailableError
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri
from tests.conftest import S3Server, free_port

pytestmark = pytest.mark.integration


def test_round_trip_list_and_artifacts(s3_env: S3Server, tmp_path: Path) -> None:
    s3_env.client().create_bucket(Bucket="kiln-rt")
    storage = Storage()
    root = parse_uri("s3://kiln-rt/models")
    storage.write_bytes(root.child("a", "one.bin"), b"1")
    src = tmp_path / "two.bin"
    src.write_bytes(b"22")
    storage.store(src, root.child("a", "b", "two.bin"))
    assert [loc.key for loc in storage.list(root)] == ["models/a/b/two.bin", "models/a/one.bin"]
    assert storage.read_bytes(root.child("a", "one.bin")) == b"1"
    assert storage.fetch(root.child("a", "b", "two.bin"), tmp_path / "cache").read_bytes() == b"22"
    assert storage.exists(root.child("a", "one.bin"))
    assert not storage.exists(root.child("missing"))

    store = ArtifactStore(storage, parse_uri("s3://kiln-rt/artifacts"), tmp_path / "cache")
    store.publish("qdq-1", {"model.onnx": src}, {"stage": "quantize"})
    assert store.manifest("qdq-1") is not None
    assert store.fetch("qdq-1", "model.onnx").read_bytes() == b"22"


def test_missing_object_and_bucket_are_named(s3_env: S3Server) -> None:
    s3_env.client().create_bucket(Bucket="kiln-missing")
    storage = Storage()
    with pytest.raises(KilnInputError, match=r"s3://kiln-missing/nope: no such object"):
        storage.read_bytes(Location("s3", "kiln-missing", "nope"))
    with pytest.raises(KilnInputError, match="bucket 'no-such-bucket' does not exist"):
        storage.list(Location("s3", "no-such-bucket", "x"))


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Unreachable storage is transient (retried, exit code 3), not a mistake in the input.
    with pytest.raises(
        StorageUnavailableError, match=f"cannot reach the S3 endpoint {endpoint}"
    ) as err:
        Storage().read_bytes(Location("s3", "bucket", "model.pt2"))
    assert isinstance(err.value, KilnTransientError)
    assert not isinstance(err.value, KilnInputError)


def test_upload_to_a_missing_bucket_is_named(s3_env: S3Server, tmp_path: Path) -> None:
    # boto3 wraps upload errors in S3UploadFailedError; the server's code must still show.
    src = tmp_path / "m.bin"
    src.write_bytes(b"m")
    with pytest.raises(KilnInputError, match="bucket 'no-such-upload-bucket' does not exist"):
        Storage().store(src, Location("s3", "no-such-upload-bucket", "m.bin"))


def test_metadata_reads_in_s3_need_no_folder(s3_env: S3Server, tmp_path: Path) -> None:
    s3_env.client().create_bucket(Bucket="kiln-meta")
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx")
    root = parse_uri("s3://kiln-meta/artifacts")
    ArtifactStore(Storage(), root, tmp_path / "cache").publish(
        "k", {"model.onnx": src}, {}, documents={"result.json": {"a": 1}}
    )
    reader = ArtifactStore(Storage(), root)  # no download folder, as the operator builds it
    assert reader.manifest("k") is not None
    assert reader.read_json("k", "result.json") == {"a": 1}
    with pytest.raises(RuntimeError, match="downloading needs a cache folder"):
        reader.fetch("k", "model.onnx")
