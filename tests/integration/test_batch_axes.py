"""A PyTorch model whose inputs do not all batch on axis 0, end to end: a chunk batched on axis
0, a recurrent state `[2, B, 16]` batched on axis 1 and a rank-0 gain. Every engine is built
with the batch dynamic on each input's own axis, the calibration shards hold the state's
samples on axis 1, and `kiln serve` answers a batch of 3 with the eager model's numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.runtime.aoti_runner import AotiRunner
from kiln.runtime.base import infer
from tests.conftest import make_tiny_example, tiny_spec, write_calibration
from tests.fixtures.tiny_models import build_recurrent
from tests.integration.test_output_binding import local_path
from tests.integration.test_serve import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INPUTS: list[dict[str, Any]] = [
    {"name": "x", "shape": [-1, 4, 8]},
    {"name": "h", "shape": [2, -1, 16], "batchAxis": 1},
    {"name": "gain", "shape": []},
]
OUTPUTS = ["h_n", "y"]


def feeds(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "x": rng.standard_normal((batch, 4, 8)).astype(np.float32),
        "h": rng.standard_normal((2, batch, 16)).astype(np.float32),
        "gain": np.array(1.5, np.float32),
    }


def expected(given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        result = build_recurrent()(**{n: torch.from_numpy(a) for n, a in given.items()})
    return {k: v.numpy() for k, v in result.items()}


def test_a_state_batched_on_axis_1_and_a_scalar_build_and_serve(tmp_path: Path) -> None:
    example = make_tiny_example(tmp_path, calibration=False)
    rng = np.random.default_rng(3)
    write_calibration(
        tmp_path / "calibration",
        24,
        x=rng.standard_normal((12, 4, 8)).astype(np.float32),
        h=rng.standard_normal((2, 12, 16)).astype(np.float32),  # samples on the batch axis
        gain=np.full((12,), 1.5, np.float32),  # no batch axis: samples on a new axis 0
    )
    spec = tiny_spec(
        source={"uri": "weights.pt", "factory": "tiny_models:build_recurrent"},
        inputs=INPUTS,
        outputs=OUTPUTS,
        backends=["pytorch", "aotinductor", "onnxruntime"],
        calibration={"uri": "calibration", "samples": 16, "method": "minmax"},
        selection={"minSpeedup": 0.01},
    )
    # The weights the factory loads: the recurrent model's, not the tiny classifier's.
    torch.save(build_recurrent().state_dict(), tmp_path / "weights.pt")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["optimize", str(example.write_spec(spec)), "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    status = json.loads((out / "status.json").read_text())
    target = next(t for t in status["targets"] if t["name"] == "cpu")
    candidates = {c["name"]: c for c in target["candidates"]}
    for name in ("aotinductor-cpu-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"):
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] in (True, False)  # judged, not crashed

    given = feeds(3)
    want = expected(given)
    package = local_path(candidates["aotinductor-cpu-fp32"]["artifact"])
    answers = infer(AotiRunner("aoti", package, ["x", "h", "gain"], "cpu"), given)
    for name, got in zip(OUTPUTS, answers, strict=True):
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-5)

    process, url = start(out, "--name", "rnn")
    try:
        body = {
            "inputs": [
                {
                    "name": n,
                    "shape": list(a.shape),
                    "datatype": "FP32",
                    "data": a.ravel().tolist(),
                }
                for n, a in given.items()
            ]
        }
        response = httpx.post(f"{url}/v2/models/rnn/infer", json=body, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert response.status_code == 200, response.text
    served = {o["name"]: o for o in response.json()["outputs"]}
    assert served["h_n"]["shape"] == [2, 3, 16]
    for name in OUTPUTS:
        array = np.asarray(served[name]["data"], np.float32).reshape(served[name]["shape"])
        np.testing.assert_allclose(array, want[name], rtol=1e-4, atol=1e-5)
