"""A builder killed (SIGKILL) between two files of one artifact, then run again: the rerun
completes, and every artifact folder's manifest matches the objects in storage. Real S3
server, real `kiln optimize`; the kill is injected by tests/faults/kill_mid_upload.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3Server, TinyExample, tiny_spec
from tests.faults.figures import report
from tests.fixtures.artifacts import check_manifests, folders

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BUCKET = "kiln-kill"
KILN = str(Path(sys.executable).parent / "kiln")


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
    half = check_manifests(folders(client, BUCKET, "artifacts/"))
    assert half, "the kill left no half-written artifact folder"
    print(f"\nhalf-written by the kill: {half}")

    rerun = subprocess.run([KILN, *argv, "-o", str(tiny.root / "b")], env=env, check=False)
    assert rerun.returncode == 0
    stored = folders(client, BUCKET, "artifacts/")
    for folder in half:
        assert "manifest.json" in stored[folder]  # rebuilt and completed
    assert check_manifests(stored) == []
    report(
        "builder SIGKILLed between two files of an artifact (kiln optimize, S3)",
        faults="1 SIGKILL mid-upload",
        resources=1,
        lost=len([f for f in half if "manifest.json" not in stored[f]]),
    )
