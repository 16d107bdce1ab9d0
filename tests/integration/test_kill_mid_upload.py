"""A builder killed (SIGKILL) between two files of one artifact, then run again: the rerun
completes, and every artifact folder's manifest matches the objects in storage. Real S3
server, real `kiln optimize`; the kill is injected by tests/faults/kill_mid_upload.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3Server, TinyExample, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "kiln-kill"
KILN = str(Path(sys.executable).parent / "kiln")


def folders(client: object, prefix: str) -> dict[str, dict[str, bytes]]:
    """Artifact folder -> {object name: content}."""
    out: dict[str, dict[str, bytes]] = {}
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)  # type: ignore[attr-defined]
    for item in listing.get("Contents", []):
        folder, _, name = item["Key"].rpartition("/")
        body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()  # type: ignore[attr-defined]
        out.setdefault(folder, {})[name] = body
    return out


def test_a_builder_killed_mid_upload_is_rebuilt_and_every_manifest_matches(
    tiny: TinyExample, s3_env: S3Server
) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket=BUCKET)
    tiny.write_spec(tiny_spec(artifacts={"uri": f"s3://{BUCKET}/artifacts"}))
    argv = ["optimize", str(tiny.spec_path), "-q"]
    env = {**os.environ}
    killed = subprocess.run(
        [sys.executable, "-m", "tests.faults.kill_mid_upload", *argv, "-o", str(tiny.root / "a")],
        env=env,
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout.decode()[-2000:]
    half = [f for f, objs in folders(client, "artifacts/").items() if "manifest.json" not in objs]
    assert half, "the kill left no half-written artifact folder"
    print(f"\nhalf-written by the kill: {half}: {sorted(folders(client, half[0])[half[0]])}")

    rerun = subprocess.run([KILN, *argv, "-o", str(tiny.root / "b")], env=env, check=False)
    assert rerun.returncode == 0
    stored = folders(client, "artifacts/")
    for folder in half:
        assert "manifest.json" in stored[folder]  # rebuilt and completed
    for folder, objects in stored.items():
        if "manifest.json" not in objects:
            continue
        manifest = json.loads(objects["manifest.json"])
        assert set(manifest["files"]) == set(objects) - {"manifest.json"}, folder
        for name, digest in manifest["files"].items():
            assert digest == "sha256:" + hashlib.sha256(objects[name]).hexdigest(), name
