"""GPU candidates on a real NVIDIA GPU. Without one, every test here reports SKIPPED with the
reason; nothing is faked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kiln.cli.main import app
from tests.conftest import TinyExample, tiny_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
    ),
]


def test_gpu_target_runs_every_available_candidate(tiny: TinyExample) -> None:
    tiny.write_spec(
        tiny_spec(
            targets={"cpu": False},
            backends=["pytorch", "aotinductor", "onnxruntime", "tensorrt"],
            precisions=["fp32", "fp16", "bf16", "int8"],
        )
    )
    out = tiny.root / "out"
    result = CliRunner().invoke(app, ["optimize", str(tiny.spec_path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    (target,) = json.loads((out / "status.json").read_text())["targets"]
    assert target["device"] == "cuda"
    assert target["state"] == "OK"
    cands = {c["name"]: c for c in target["candidates"]}
    assert cands["pytorch-cuda-fp32"]["state"] == "OK"
    for name, cand in cands.items():
        if cand["state"] == "SKIPPED":
            # Only a missing optional GPU package, or bf16 from ONNX (no bf16 ONNX model),
            # may skip a candidate on a GPU machine.
            missing = ("install kiln[gpu]", "install kiln[tensorrt]", "needs a bf16 ONNX model")
            assert any(m in cand["reason"] for m in missing), (name, cand["reason"])
        else:
            assert cand["state"] == "OK", (name, cand.get("reason"))
            assert cand["throughput"] > 0
    if cands.get("onnxruntime-cuda-fp32", {}).get("state") == "OK":
        assert cands["onnxruntime-cuda-fp32"]["accuracy"]["passed"]
    # AOTInductor needs nothing PyTorch does not ship: both packages build and pass their gates.
    for name in ("aotinductor-cuda-fp32", "aotinductor-cuda-fp16", "aotinductor-cuda-bf16"):
        assert cands[name]["state"] == "OK", (name, cands[name].get("reason"))
        assert cands[name]["accuracy"]["passed"], cands[name]["accuracy"]
        assert cands[name]["artifact"].endswith("/model.pt2")


def test_tensorrt_build_failure_is_reported_not_fatal(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (kiln[tensorrt])")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kiln.runtime.trt_build",
            "--onnx",
            str(bad),
            "--engine",
            str(tmp_path / "e.plan"),
            "--shape",
            "x=1x3:1x3:1x3",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "error: TensorRT could not parse the ONNX model" in proc.stderr
    assert not (tmp_path / "e.plan").exists()


def test_a_cuda_package_runs_on_this_gpu_and_is_refused_on_the_cpu(tiny: TinyExample) -> None:
    """The CUDA package runs on this GPU; the same package on a CPU runner is
    refused by its recorded device type before anything is loaded."""
    from kiln.runtime.aoti_runner import AotiRunner, IncompatiblePackageError
    from kiln.storage.objects import parse_uri

    tiny.write_spec(
        tiny_spec(
            targets={"cpu": False},
            backends=["pytorch", "aotinductor"],
            precisions=["fp32"],
            calibration=None,
            selection={"minSpeedup": 0.01},
        )
    )
    out = tiny.root / "out"
    result = CliRunner().invoke(app, ["optimize", str(tiny.spec_path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    (target,) = json.loads((out / "status.json").read_text())["targets"]
    assert target["selected"] == "aotinductor-cuda-fp32"
    chosen = next(c for c in target["candidates"] if c["name"] == target["selected"])
    package = Path(parse_uri(chosen["artifact"]).key)
    runner = AotiRunner("gpu", package, ["image"], "cuda:0", 1)
    image = torch.randn(2, 3, 16, 16).numpy()
    runner.prepare({"image": image})
    runner.run()
    assert runner.outputs()[0].shape == (2, 4)
    with pytest.raises(IncompatiblePackageError, match="compiled for device type cuda"):
        AotiRunner("cpu", package, ["image"], "cpu")
