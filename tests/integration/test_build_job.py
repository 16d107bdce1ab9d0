"""`kiln build`: what the operator's builder Jobs run, driven exactly as a pod would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from kiln.api.errors import ErrorKind, ExitCode
from kiln.api.report import parse_report
from kiln.cli.main import app
from tests.conftest import TinyExample, free_port

pytestmark = pytest.mark.slow


def write_request(tiny: TinyExample, key: str, **extra: Any) -> Path:
    model = yaml.safe_load(tiny.spec_path.read_text())
    request = {"model": model, "artifactsUri": str(tiny.artifacts), "requestKey": key, **extra}
    path = tiny.root / f"{key}.json"
    path.write_text(json.dumps(request))
    return path


def build(*args: str) -> Any:
    return CliRunner().invoke(app, ["build", *args], catch_exceptions=False)


def test_export_then_targets(tiny: TinyExample, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tiny.root)  # relative URIs resolve against the Job's working dir
    log = tiny.root / "termination-log"
    request = write_request(tiny, "req-cpu")
    target_request = write_request(tiny, "req-cpu-target")
    result = build("--request", str(request), "--stage", "export", "--termination-log", str(log))
    assert result.exit_code == 0, result.output
    message = json.loads(log.read_text())
    assert message["stage"] == "export"
    assert json.loads((tiny.artifacts / "req-cpu" / "export.json").read_text()) == message
    assert message["onnx"].endswith("/model.onnx")
    assert message["qdq"].endswith("/model.onnx")

    result = build(
        "--request",
        str(target_request),
        "--stage",
        "target",
        "--target",
        "cpu",
        "--termination-log",
        str(log),
    )
    assert result.exit_code == 0, result.output
    message = json.loads(log.read_text())
    assert message["state"] == "OK"
    assert message["target"] == "cpu"
    stored = json.loads((tiny.artifacts / "req-cpu-target" / "result.json").read_text())
    assert stored["cacheKey"] == message["resultKey"]
    assert (tiny.artifacts / "req-cpu-target" / "manifest.json").exists()

    gpu = write_request(tiny, "req-l4")
    result = build(
        "--request",
        str(gpu),
        "--stage",
        "target",
        "--target",
        "NVIDIA-L4",
        "--termination-log",
        str(log),
    )
    assert result.exit_code == 0, result.output
    message = json.loads(log.read_text())
    assert message["state"] == "SKIPPED"
    assert "NVIDIA-L4" in message["reason"] or "CUDA" in message["reason"]


def test_bad_request_reports_on_the_termination_log(tiny: TinyExample) -> None:
    log = tiny.root / "termination-log"
    broken = tiny.root / "broken.json"
    broken.write_text("{not json")
    result = build("--request", str(broken), "--stage", "export", "--termination-log", str(log))
    assert result.exit_code == 2
    assert "not a valid build request" in json.loads(log.read_text())["error"]
    request = write_request(tiny, "req-x")
    result = build("--request", str(request), "--stage", "target", "--termination-log", str(log))
    assert result.exit_code == 2
    assert json.loads(log.read_text())["error"] == "--target: required with --stage target"


def test_unreachable_storage_is_transient_for_the_job(
    tiny: TinyExample, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 3, which the Job's podFailurePolicy retries, and a report that says so."""
    monkeypatch.chdir(tiny.root)  # relative URIs resolve against the Job's working dir
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    log = tiny.root / "termination-log"
    request = write_request(tiny, "req-down", artifactsUri="s3://kiln/artifacts")
    result = build("--request", str(request), "--stage", "export", "--termination-log", str(log))
    assert result.exit_code == ExitCode.TRANSIENT, result.output
    report = parse_report(log.read_text())
    assert report is not None
    assert report.error_kind is ErrorKind.TRANSIENT
    assert report.error is not None
    assert "cannot reach the S3 endpoint" in report.error
