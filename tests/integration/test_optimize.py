"""`kiln optimize` end to end on a tiny model: real PyTorch, real export, real ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kiln.cli.main import app
from tests.conftest import S3Server, TinyExample, tiny_spec, write_calibration

pytestmark = pytest.mark.slow


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["optimize", *args, "--quiet"], catch_exceptions=False)


def status_of(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "status.json").read_text())
    return data


def test_optimize_writes_status_and_report_then_reuses_everything(tiny: TinyExample) -> None:
    out = tiny.root / "out"
    result = run(str(tiny.spec_path), "--output", str(out))
    assert result.exit_code == 0, result.output
    status = status_of(out)
    assert status["phase"] in ("Ready", "NoImprovement")
    assert status["modelDigest"].startswith("sha256:")
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    assert cpu["baseline"] == "pytorch-cpu-fp32"
    by_name = {c["name"]: c for c in cpu["candidates"]}
    assert set(by_name) == {"pytorch-cpu-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"}
    for cand in by_name.values():
        assert cand["state"] == "OK", cand
        assert set(cand["latencyMs"]) >= {"p50", "p90", "p99"}
        assert cand["throughput"] > 0
        assert cand["cacheKey"]
        assert [b["batchSize"] for b in cand["benchmarks"]] == [1, 4]
        assert "passed" in cand["accuracy"]
    assert by_name["pytorch-cpu-fp32"]["speedup"] == pytest.approx(1.0)
    # Measured side by side: every benchmark has its rounds, interval and how they ended.
    for bench in by_name["onnxruntime-cpu-fp32"]["benchmarks"]:
        interval = bench["speedupInterval"]
        assert interval["low"] <= bench["speedup"] <= interval["high"]
        assert bench["rounds"] >= 2
        assert bench["converged"] in (True, False)
    assert cpu["environment"]["cpuThreads"] == 1
    assert cpu["environment"]["threadsSource"] == "spec.benchmark.threads"
    assert cpu["buildSeconds"] > 0
    assert by_name["onnxruntime-cpu-fp32"]["accuracy"]["passed"] is True
    assert by_name["onnxruntime-cpu-int8"]["artifact"].endswith("/model.onnx")
    cuda = next(t for t in status["targets"] if t["device"] == "cuda")
    assert cuda["state"] == "SKIPPED"
    assert "CUDA" in cuda["reason"]
    assert (out / "report.md").read_text().startswith("# Kiln report: tiny")
    model = json.loads((out / "model.json").read_text())
    assert model["metadata"]["name"] == "tiny"
    assert model["spec"]["inputs"][0]["shape"] == [-1, 3, 16, 16]
    assert "<svg" in (out / "report.html").read_text()
    manifests = tiny.manifests()

    again = tiny.root / "again"
    result = run(str(tiny.spec_path), "--output", str(again))
    assert result.exit_code == 0
    second = status_of(again)
    cpu2 = next(t for t in second["targets"] if t["name"] == "cpu")
    assert cpu2["cached"] is True
    assert cpu2["cacheKey"] == cpu["cacheKey"]
    # The same numbers, each now saying it came from the stored result, as the table does.
    assert [c["cached"] for c in cpu["candidates"]] == [False] * 3
    assert [c["cached"] for c in cpu2["candidates"]] == [True] * 3
    assert [{**c, "cached": False} for c in cpu2["candidates"]] == cpu["candidates"]
    assert tiny.manifests() == manifests  # nothing new was built


def test_changing_calibration_rebuilds_only_what_it_affects(tiny: TinyExample) -> None:
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "a")).exit_code == 0
    first = {p.parent.name for p in tiny.manifests()}
    spec = tiny_spec(calibration={"uri": "calibration", "samples": 16, "method": "percentile"})
    tiny.write_spec(spec)
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "b")).exit_code == 0
    second = {p.parent.name for p in tiny.manifests()}
    added = sorted(second - first)
    # A new Q/DQ model and a new result; the FP32 export is reused as is.
    assert [k.split("-")[0] for k in added] == ["qdq", "result"]
    a, b = status_of(tiny.root / "a"), status_of(tiny.root / "b")
    assert a["onnxArtifact"] == b["onnxArtifact"]
    assert a["quantizedArtifact"] != b["quantizedArtifact"]


def write_validation(tiny: TinyExample, seed: int) -> None:
    """8 samples unlike the calibration set's (another seed), in `val/`."""
    import numpy as np

    image = np.random.default_rng(seed).standard_normal((8, 3, 16, 16)).astype(np.float32)
    write_calibration(tiny.root / "val", 8, shards=1, image=image)


def test_gates_run_on_a_validation_set_or_on_held_out_samples(tiny: TinyExample) -> None:
    """With accuracy.uri every gate runs on the validation set, and status says so; new
    content under the same URI is a new measurement; without it the gates run on held-out
    calibration samples, and a gate whose atol dwarfs the outputs says it is blind."""
    write_validation(tiny, seed=11)
    accuracy = {"samples": 4, "int8MaxDegradation": 0.2}
    tiny.write_spec(tiny_spec(accuracy={**accuracy, "uri": "val"}))
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "a")).exit_code == 0
    a = status_of(tiny.root / "a")
    cpu = a["targets"][0]
    assert cpu["accuracyGate"] == {
        "data": "validationSet",
        "samples": 4,
        "source": f"validation set {(tiny.root / 'val').as_uri()} (4 samples)",
    }
    assert all(c["accuracy"]["samples"] == 4 for c in cpu["candidates"])
    assert (
        "Accuracy checked on validation set file://" in (tiny.root / "a" / "report.md").read_text()
    )

    write_validation(tiny, seed=12)  # other samples under the same URI
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "b")).exit_code == 0
    b = status_of(tiny.root / "b")
    assert b["targets"][0]["cached"] is False
    assert b["targets"][0]["cacheKey"] != cpu["cacheKey"]
    assert b["quantizedArtifact"] == a["quantizedArtifact"]  # calibration is unaffected

    tiny.write_spec(tiny_spec(accuracy={**accuracy, "atol": 1000.0}))
    result = CliRunner().invoke(
        app, ["optimize", str(tiny.spec_path), "--output", str(tiny.root / "c")]
    )
    assert result.exit_code == 0, result.output
    c = status_of(tiny.root / "c")
    gate = c["targets"][0]["accuracyGate"]
    assert gate["data"] == "heldOut"
    assert gate["source"] == "held out 4 of 32 calibration samples (never calibrated on)"
    # Held out: the quantizer read other samples than with a validation set.
    assert c["quantizedArtifact"] != a["quantizedArtifact"]
    assert gate["warning"].startswith("the gate cannot tell engines apart")
    assert "below fp32 atol 1000" in gate["warning"]
    assert "cpu: warning: the gate cannot tell engines apart" in result.stderr
    assert "**Warning:** the gate cannot tell" in (tiny.root / "c" / "report.md").read_text()


def test_selection_change_needs_no_new_measurement(tiny: TinyExample) -> None:
    """Every objective, the decision batch and minSpeedup re-decide from the stored result:
    no new artifact, no new measurement, headline numbers from the decision batch."""
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "a")).exit_code == 0
    count = len(tiny.manifests())
    first = status_of(tiny.root / "a")["targets"][0]
    changes: list[tuple[dict[str, Any], int]] = [
        ({"objective": "minLatency"}, 1),  # decides at the smallest batch size
        ({"objective": "maxThroughputUnderLatency", "latencyBudgetMs": 1000}, 4),
        ({"objective": "maxThroughput", "batchSize": 1}, 1),
        ({"minSpeedup": 1000}, 4),
    ]
    for i, (selection, batch) in enumerate(changes):
        tiny.write_spec(tiny_spec(selection=selection))
        out = tiny.root / f"b{i}"
        assert run(str(tiny.spec_path), "--output", str(out)).exit_code == 0
        cpu = status_of(out)["targets"][0]
        assert cpu["cached"] is True, selection
        assert cpu["cacheKey"] == first["cacheKey"], selection
        measured = [c for c in cpu["candidates"] if c["state"] == "OK"]
        assert {c["batchSize"] for c in measured} == {batch}, selection
        for c in measured:
            (at,) = [b for b in c["benchmarks"] if b["batchSize"] == batch]
            assert c["throughput"] == at["throughput"]
        assert len(tiny.manifests()) == count, selection
    assert "selected" not in cpu  # None is left out of the wire form
    assert "minSpeedup 1000x" in cpu["selectionReason"]
    assert status_of(out)["phase"] == "NoImprovement"


def test_capacity_and_cost_need_no_new_measurement(tiny: TinyExample) -> None:
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "a")).exit_code == 0
    count = len(tiny.manifests())
    tiny.write_spec(
        tiny_spec(
            serving={"targetThroughput": 5000, "replicas": "auto"},
            cost={"hourly": {"cpu": 0.25}},
        )
    )
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "b")).exit_code == 0
    assert len(tiny.manifests()) == count
    status = status_of(tiny.root / "b")
    cpu = status["targets"][0]
    plan = cpu["capacity"]
    baseline = next(c for c in cpu["candidates"] if c["name"] == cpu["baseline"])
    measured = next(b for b in baseline["benchmarks"] if b["batchSize"] == plan["batchSize"])
    assert plan["baselineReplicas"] == math.ceil(5000 / (measured["throughput"] * 0.8))
    assert plan["baselineMonthlyCost"] == pytest.approx(plan["baselineReplicas"] * 0.25 * 730)
    if status["phase"] == "Ready":
        assert status["cheapestTarget"] == "cpu"
        assert status["savings"].endswith("/mo")
        assert "## Capacity and cost" in (tiny.root / "b" / "report.md").read_text()


@pytest.mark.integration
def test_optimize_from_and_to_s3(tiny: TinyExample, s3_env: S3Server) -> None:
    client = s3_env.client()
    client.create_bucket(Bucket="kiln-e2e")
    client.upload_file(str(tiny.root / "weights.pt"), "kiln-e2e", "models/tiny/weights.pt")
    for shard in sorted((tiny.root / "calibration").glob("*.npz")):
        client.upload_file(str(shard), "kiln-e2e", f"calib/tiny/{shard.name}")
    write_validation(tiny, seed=11)
    client.upload_file(str(tiny.root / "val" / "shard-0.npz"), "kiln-e2e", "val/tiny/0.npz")
    spec = tiny_spec(
        source={
            "uri": "s3://kiln-e2e/models/tiny/weights.pt",
            "format": "factory",
            "factory": "tiny_models:build",
        },
        calibration={"uri": "s3://kiln-e2e/calib/tiny", "samples": 16, "method": "entropy"},
        artifacts={"uri": "s3://kiln-e2e/artifacts"},
        accuracy={"samples": 4, "int8MaxDegradation": 0.2, "uri": "s3://kiln-e2e/val/tiny"},
        backends=["onnxruntime"],
    )
    tiny.write_spec(spec)
    result = run(str(tiny.spec_path), "--output", str(tiny.root / "out"))
    assert result.exit_code == 0, result.output
    status = status_of(tiny.root / "out")
    gate = status["targets"][0]["accuracyGate"]
    assert gate["source"] == "validation set s3://kiln-e2e/val/tiny (4 samples)"
    assert status["quantizedArtifact"].startswith("s3://kiln-e2e/artifacts/qdq-")
    keys = [
        o["Key"] for o in client.list_objects_v2(Bucket="kiln-e2e", Prefix="artifacts/")["Contents"]
    ]
    assert any(k.endswith("/result.json") for k in keys)
    assert sum(k.endswith("/manifest.json") for k in keys) == 3  # onnx, qdq, cpu result


def _write_source(tiny: TinyExample, fmt: str) -> dict[str, Any]:
    import torch

    from tests.fixtures.tiny_models import build

    module = build().eval()
    example = (torch.randn(2, 3, 16, 16),)
    if fmt == "torchscript":
        traced = torch.jit.trace(module, example)  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(tiny.root / "tiny.ts"))
        return {"uri": "tiny.ts"}
    if fmt == "exported":
        batch = torch.export.Dim("batch", min=1, max=64)
        program = torch.export.export(module, example, dynamic_shapes={"image": {0: batch}})
        torch.export.save(program, str(tiny.root / "tiny.pt2"))
        return {"uri": "tiny.pt2"}
    torch.onnx.export(
        module,
        example,
        str(tiny.root / "tiny.onnx"),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}},
        dynamo=False,
    )
    return {"uri": "tiny.onnx"}


@pytest.mark.parametrize("fmt", ["torchscript", "exported", "onnx"])
def test_every_source_format(tiny: TinyExample, fmt: str) -> None:
    tiny.write_spec(tiny_spec(source=_write_source(tiny, fmt)))
    out = tiny.root / "out"
    result = run(str(tiny.spec_path), "--output", str(out))
    assert result.exit_code == 0, result.output
    cpu = status_of(out)["targets"][0]
    states = {c["name"]: c["state"] for c in cpu["candidates"]}
    if fmt == "onnx":
        # No PyTorch module: ONNX Runtime FP32 on the original model is the baseline.
        assert cpu["baseline"] == "onnxruntime-cpu-fp32"
        assert states["pytorch-cpu-fp32"] == "SKIPPED"
    else:
        assert cpu["baseline"] == "pytorch-cpu-fp32"
        assert states["pytorch-cpu-fp32"] == "OK"
    assert states["onnxruntime-cpu-fp32"] == "OK"
    assert states["onnxruntime-cpu-int8"] == "OK"
    fp32 = next(c for c in cpu["candidates"] if c["name"] == "onnxruntime-cpu-fp32")
    assert fp32["accuracy"]["passed"], fp32["accuracy"]


def test_the_benchmark_over_a_filled_store_remeasures_without_rebuilding(
    tiny: TinyExample,
) -> None:
    """`benchmarks/runtime_speedup.py --artifacts STORE` (how a GPU lease runs it after `kiln
    optimize`): every candidate is timed again, and no engine is compiled twice."""
    import subprocess
    import sys

    tiny.write_spec(tiny_spec(backends=["pytorch", "aotinductor"], precisions=["fp32"]))
    assert run(str(tiny.spec_path), "--output", str(tiny.root / "out")).exit_code == 0
    built = {p: p.stat().st_mtime_ns for p in tiny.manifests()}
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[2] / "benchmarks/runtime_speedup.py"),
            str(tiny.spec_path),
            "--batch-sizes",
            "1",
            "4",
            "--seconds",
            "2",
            "--artifacts",
            str(tiny.artifacts),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "reusing the stored result" not in proc.stdout
    assert "aotinductor-cpu-fp32" in proc.stdout
    assert "Where the time goes on CPU" in proc.stdout
    # The engines are the same files: only a new result was published beside them.
    assert {p: built[p] for p in built} == {p: p.stat().st_mtime_ns for p in built}
    assert len(tiny.manifests()) == len(built) + 1
