from __future__ import annotations

from pathlib import Path

import pytest

from kiln.api.errors import KilnInputError
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri


def test_parse_uri_forms(tmp_path: Path) -> None:
    assert parse_uri("s3://bucket/a/b").uri == "s3://bucket/a/b"
    assert parse_uri("rel/x", base_dir=tmp_path).key == str(tmp_path / "rel" / "x")
    assert parse_uri(f"file://{tmp_path}/x").key == str(tmp_path / "x")
    with pytest.raises(KilnInputError, match="unsupported scheme 'gs'"):
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
