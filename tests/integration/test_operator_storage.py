"""What the operator reads from object storage, against a real S3-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.api.errors import KilnInputError, StorageUnavailableError
from kiln.api.load import parse_document
from kiln.api.spec import OptimizedModel
from kiln.operator.observe import fingerprint
from kiln.storage.objects import Storage
from tests.conftest import S3Server, free_port

pytestmark = pytest.mark.integration


def model(source: str, calibration: str, validation: str | None = None) -> OptimizedModel:
    doc: dict[str, Any] = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "m"},
        "spec": {
            "source": {"uri": source},
            "inputs": [{"name": "x", "shape": [-1, 2]}],
            "outputs": ["y"],
            "calibration": {"uri": calibration},
        },
    }
    if validation is not None:
        doc["spec"]["accuracy"] = {"uri": validation}
    return parse_document(doc, "test")


def test_fingerprint_follows_content_in_s3(s3_env: S3Server) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket="fp-bucket")
    client.put_object(Bucket="fp-bucket", Key="m/model.pt2", Body=b"v1")
    client.put_object(Bucket="fp-bucket", Key="m/cal/a.npz", Body=b"cal")
    spec = model("s3://fp-bucket/m/model.pt2", "s3://fp-bucket/m/cal")
    first = fingerprint(Storage(), spec)
    assert first == fingerprint(Storage(), spec)
    client.put_object(Bucket="fp-bucket", Key="m/model.pt2", Body=b"v2")
    second = fingerprint(Storage(), spec)
    assert second != first
    client.put_object(Bucket="fp-bucket", Key="m/cal/b.npz", Body=b"more")
    assert fingerprint(Storage(), spec) != second


def test_fingerprint_follows_the_validation_set(s3_env: S3Server) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket="fp-val")
    client.put_object(Bucket="fp-val", Key="m/model.pt2", Body=b"v1")
    client.put_object(Bucket="fp-val", Key="m/cal/a.npz", Body=b"cal")
    client.put_object(Bucket="fp-val", Key="m/val/a.npz", Body=b"val")
    spec = model("s3://fp-val/m/model.pt2", "s3://fp-val/m/cal", "s3://fp-val/m/val")
    first = fingerprint(Storage(), spec)
    assert first != fingerprint(Storage(), model("s3://fp-val/m/model.pt2", "s3://fp-val/m/cal"))
    client.put_object(Bucket="fp-val", Key="m/val/a.npz", Body=b"new content, same name")
    assert fingerprint(Storage(), spec) != first
    empty = model("s3://fp-val/m/model.pt2", "s3://fp-val/m/cal", "s3://fp-val/m/none")
    with pytest.raises(KilnInputError, match=r"^spec\.accuracy\.uri: no \.npz shards"):
        fingerprint(Storage(), empty)


def test_missing_objects_name_the_field(s3_env: S3Server, tmp_path: Path) -> None:
    s3_env.client().create_bucket(Bucket="fp-missing")
    with pytest.raises(
        KilnInputError, match=r"^spec.source.uri \(s3://fp-missing/nope.pt2\): no such"
    ):
        fingerprint(Storage(), model("s3://fp-missing/nope.pt2", "s3://fp-missing/cal"))
    (tmp_path / "m.pt2").write_bytes(b"x")
    (tmp_path / "cal").mkdir()
    with pytest.raises(KilnInputError, match=r"spec\.calibration\.uri: no \.npz shards"):
        fingerprint(Storage(), model(str(tmp_path / "m.pt2"), str(tmp_path / "cal")))


def test_unreachable_storage_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(StorageUnavailableError):
        fingerprint(Storage(), model("s3://b/m.pt2", "s3://b/cal"))
