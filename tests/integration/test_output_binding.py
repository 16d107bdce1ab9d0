"""Outputs bind to what the model returns by key, end to end: a model returning a dict (as a
Hugging Face `ModelOutput` does), with a spec that lists two of its three outputs in another
order, builds every FP32 engine, and each one, `kiln serve` included, answers every name with
that key's tensor. Two of the three outputs have one shape, so binding by position would pass
every shape check and serve the wrong tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.runtime.aoti_runner import AotiRunner
from kiln.runtime.base import infer
from kiln.storage.objects import parse_uri
from tests.conftest import make_tiny_example, tiny_spec
from tests.fixtures.tiny_models import build_keyed
from tests.integration.test_serve import Server, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FP32_BACKENDS = ["pytorch", "aotinductor", "onnxruntime"]
OUTPUTS = ["probs", "logits"]  # `features` left out; the model returns features, logits, probs


def expected(image: np.ndarray) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        result = build_keyed().eval()(torch.from_numpy(image))
    return {k: v.numpy() for k, v in result.items()}


def local_path(uri: str) -> Path:
    return Path(parse_uri(uri).key)


def served_outputs(server: Server, image: np.ndarray) -> dict[str, Any]:
    response = server.infer(image)
    assert response.status_code == 200, response.text
    return {o["name"]: o for o in response.json()["outputs"]}


def test_dict_outputs_bind_by_key_in_every_engine_and_in_kiln_serve(tmp_path: Path) -> None:
    example = make_tiny_example(tmp_path, calibration=False)
    spec = tiny_spec(
        source={"uri": "weights.pt", "factory": "tiny_models:build_keyed"},
        outputs=OUTPUTS,
        backends=FP32_BACKENDS,
        precisions=["fp32"],
        calibration=None,
        selection={"minSpeedup": 0.01},
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["optimize", str(example.write_spec(spec)), "-o", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    status = json.loads((out / "status.json").read_text())
    target = next(t for t in status["targets"] if t["name"] == "cpu")
    candidates = {c["name"]: c for c in target["candidates"]}
    assert {c["state"] for c in candidates.values()} == {"OK"}, candidates

    image = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    want = expected(image)
    session = onnxruntime.InferenceSession(str(local_path(status["onnxArtifact"])))
    assert [o.name for o in session.get_outputs()] == OUTPUTS  # `features` is not computed
    by_onnx = dict(zip(OUTPUTS, session.run(OUTPUTS, {"image": image}), strict=True))
    package = local_path(candidates["aotinductor-cpu-fp32"]["artifact"])
    answers = infer(AotiRunner("aoti", package, ["image"], "cpu"), {"image": image})
    by_package = dict(zip(OUTPUTS, answers, strict=True))
    for name in OUTPUTS:
        np.testing.assert_allclose(by_onnx[name], want[name], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(by_package[name], want[name], rtol=1e-4, atol=1e-5)

    process, url = start(out, "--name", "tiny")
    try:
        served = served_outputs(Server(url, out, process), image)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert list(served) == OUTPUTS
    for name in OUTPUTS:
        got = np.asarray(served[name]["data"], np.float32).reshape(served[name]["shape"])
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-5)


def test_a_name_the_model_does_not_return_is_refused_with_the_names_it_does(
    tmp_path: Path,
) -> None:
    example = make_tiny_example(tmp_path, calibration=False)
    spec = tiny_spec(
        source={"uri": "weights.pt", "factory": "tiny_models:build_keyed"},
        outputs=["logits", "pooler_output"],
        backends=["pytorch", "onnxruntime"],
        precisions=["fp32"],
        calibration=None,
    )
    result = CliRunner().invoke(
        app, ["optimize", str(example.write_spec(spec)), "-o", str(tmp_path / "out"), "-q"]
    )
    assert result.exit_code == 2, result.output
    assert (
        "spec.outputs[1]: 'pooler_output' is not an output of the model; it returns "
        "['features', 'logits', 'probs']"
    ) in " ".join(result.output.split())
