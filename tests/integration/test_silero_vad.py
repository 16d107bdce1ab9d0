"""silero-vad as users bring it: the ONNX file shipped in the real `silero-vad` package (real
trained weights), whose inputs are audio `[B, 576]`, a recurrent state `[2, B, 128]` batched on
axis 1, and the sample rate, an int64 scalar. `kiln optimize` builds it and `kiln serve`
answers a stream of chunks, the state carried from answer to request, exactly as the package's
own wrapper (`OnnxWrapper`) answers them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml

from tests.integration.test_hf_models import cpu_target, kiln_optimize
from tests.integration.test_hf_models import write_spec as hf_spec
from tests.integration.test_serve import start

silero_vad = pytest.importorskip("silero_vad")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTEXT, CHUNK = 64, 512  # the wrapper feeds each 512-sample chunk after the last 64 samples
INPUTS: list[dict[str, Any]] = [
    {"name": "input", "shape": [-1, CONTEXT + CHUNK]},
    {"name": "state", "shape": [2, -1, 128], "batchAxis": 1},
    {"name": "sr", "shape": [], "dtype": "int64", "range": [16000, 16000]},
]


def shipped_onnx() -> Path:
    return Path(str(resources.files("silero_vad.data").joinpath("silero_vad.onnx")))


def write_spec(root: Path) -> Path:
    return hf_spec(
        root,
        "vad",
        source={"uri": str(shipped_onnx())},
        inputs=INPUTS,
        outputs=["output", "stateN"],
        backends=["onnxruntime"],
        precisions=["fp32"],
        accuracy={"samples": 4},
    )


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


def test_the_shipped_onnx_file_serves_a_stream_with_its_state_as_the_package_does(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    done = kiln_optimize(write_spec(tmp_path), out)
    assert done.returncode == 0, done.stdout + done.stderr
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    assert candidates["onnxruntime-cpu-fp32"]["state"] == "OK", candidates

    # Two streams of audio at once (batch 2), three chunks each: a tone in noise, and noise.
    rng = np.random.default_rng(0)
    t = np.arange(3 * CHUNK) / 16000
    tone = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), np.zeros_like(t)])
    audio = (tone + 0.01 * rng.standard_normal((2, 3 * CHUNK))).astype(np.float32)
    package = silero_vad.load_silero_vad(onnx=True)

    process, url = start(out, "--name", "vad")
    try:
        metadata = httpx.get(f"{url}/v2/models/vad", timeout=30).json()
        assert [i["shape"] for i in metadata["inputs"]] == [[-1, 576], [2, -1, 128], []]
        state = np.zeros((2, 2, 128), np.float32)
        context = np.zeros((2, CONTEXT), np.float32)
        for step in range(3):
            chunk = audio[:, step * CHUNK : (step + 1) * CHUNK]
            body = {
                "inputs": [
                    tensor("input", np.concatenate([context, chunk], axis=1), "FP32"),
                    tensor("state", state, "FP32"),
                    tensor("sr", np.array(16000, np.int64), "INT64"),
                ]
            }
            response = httpx.post(f"{url}/v2/models/vad/infer", json=body, timeout=30)
            assert response.status_code == 200, response.text
            served = {o["name"]: o for o in response.json()["outputs"]}
            probability = np.asarray(served["output"]["data"], np.float32)
            state = np.asarray(served["stateN"]["data"], np.float32).reshape(
                served["stateN"]["shape"]
            )
            context = chunk[:, -CONTEXT:]
            want = package(torch.from_numpy(chunk), 16000).numpy().ravel()
            np.testing.assert_allclose(probability, want, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(state, package._state.numpy(), rtol=1e-4, atol=1e-5)

        # A state batched on the wrong axis is the client's mistake: a 400 that says so.
        body["inputs"][1] = tensor("state", np.zeros((2, 3, 128), np.float32), "FP32")
        wrong = httpx.post(f"{url}/v2/models/vad/infer", json=body, timeout=30)
        assert wrong.status_code == 400
        assert "batch 3 differs from the other inputs' 2" in wrong.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=10)
    # Nothing was built to beat ONNX Runtime FP32 on the user's own file: the decision is to
    # keep it, and the kept baseline is what the server ran.
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "NoImprovement"
    assert cpu_target(out).get("selected") is None
    assert metadata["platform"] == "onnxruntime-cpu-fp32"


def test_the_shipped_torchscript_archive_takes_its_rate_as_a_constant_and_is_refused_for_its_state(
    tmp_path: Path,
) -> None:
    """The package's `.jit` is `forward(x, sr: int)` and keeps its recurrent state and audio
    context inside the module: the sample rate binds as a constant, and the check stage says
    why the archive cannot be served (the ONNX file above is the form to serve)."""
    archive = Path(str(resources.files("silero_vad.data").joinpath("silero_vad.jit")))
    document = yaml.safe_load(write_spec(tmp_path).read_text())
    document["spec"] |= {
        "source": {"uri": str(archive)},
        "inputs": [{"name": "x", "shape": [-1, CHUNK]}],
        "constants": [{"name": "sr", "value": 16000}],
        "outputs": ["probability"],
        "backends": ["pytorch", "onnxruntime"],
    }
    spec = tmp_path / "jit.yaml"
    spec.write_text(yaml.safe_dump(document))
    refused = kiln_optimize(spec, tmp_path / "out")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "spec.source: the model answered the same input differently on a second call" in said
