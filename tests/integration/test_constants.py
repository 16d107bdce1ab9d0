"""Constants: arguments a model is always called with and requests never carry (a forward's
`sr: int`, a tensor fixed for the deployment). For a factory module, a TorchScript archive and
an ONNX file, every engine is built with the constants folded in, answers what the model
answers with them, and the server's metadata lists them apart from the inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from tests.integration.test_hf_models import cpu_target, kiln_optimize
from tests.integration.test_hf_models import write_spec as hf_spec
from tests.integration.test_serve import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACTORY = '''
import torch


class Gated(torch.nn.Module):
    """What a sample rate does to an audio model: picks a branch (a Python int)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, sr: int, gain: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if sr == 16000 else 3.0
        return self.linear(x) * scale * gain


def build():
    torch.manual_seed(0)
    return Gated().eval()
'''


class Scripted(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        y: torch.Tensor = self.linear(x)
        if sr == 16000:
            return y * 2.0
        return y


class TensorRate(torch.nn.Module):
    """An ONNX file's sample rate is a graph input: an int64 scalar."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, sr: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.linear(x)
        return y * torch.where(sr == 16000, 2.0, 3.0)


def write_spec(root: Path, source: dict[str, Any], constants: list[Any], **spec: Any) -> Path:
    return hf_spec(
        root,
        "gated",
        source=source,
        inputs=[{"name": "x", "shape": [-1, 8]}],
        constants=constants,
        outputs=["y"],
        precisions=["fp32"],
        accuracy={"samples": 4},
        **spec,
    )


def served(out: Path, x: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    process, url = start(out, "--name", "gated")
    try:
        metadata = httpx.get(f"{url}/v2/models/gated", timeout=30).json()
        tensor = {
            "name": "x",
            "shape": list(x.shape),
            "datatype": "FP32",
            "data": x.ravel().tolist(),
        }
        response = httpx.post(f"{url}/v2/models/gated/infer", json={"inputs": [tensor]}, timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert response.status_code == 200, response.text
    (y,) = response.json()["outputs"]
    return metadata, np.asarray(y["data"], np.float32).reshape(y["shape"])


def check_candidates(out: Path, names: list[str]) -> None:
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    for name in names:
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] is True, candidates[name]


X = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)


def test_a_factory_with_an_int_and_a_tensor_constant_builds_and_serves_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "gated.py").write_text(FACTORY)
    namespace: dict[str, Any] = {}
    exec(compile(FACTORY, "gated.py", "exec"), namespace)
    model = namespace["build"]()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    constants = [{"name": "sr", "value": 16000}, {"name": "gain", "value": 0.5}]
    spec = write_spec(
        tmp_path,
        {"uri": "weights.pt", "factory": "gated:build"},
        constants,
        backends=["pytorch", "onnxruntime", "aotinductor"],
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    check_candidates(out, ["pytorch-cpu-fp32", "onnxruntime-cpu-fp32", "aotinductor-cpu-fp32"])
    metadata, y = served(out, X)
    with torch.inference_mode():
        want = model(torch.from_numpy(X), 16000, torch.tensor(0.5)).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert [i["name"] for i in metadata["inputs"]] == ["x"]
    assert metadata["parameters"]["constants"] == {"sr": 16000, "gain": 0.5}


def test_a_torchscript_int_argument_is_a_constant_of_every_engine(tmp_path: Path) -> None:
    torch.manual_seed(0)
    archive = torch.jit.script(Scripted().eval())
    torch.jit.save(archive, str(tmp_path / "gated.jit"))
    spec = write_spec(
        tmp_path,
        {"uri": "gated.jit"},
        [{"name": "sr", "value": 16000}],
        backends=["pytorch", "onnxruntime"],
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    check_candidates(out, ["pytorch-cpu-fp32", "onnxruntime-cpu-fp32"])
    _, y = served(out, X)
    with torch.inference_mode():
        want = archive(torch.from_numpy(X), 16000).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)

    # A value the argument's type cannot hold is refused at the check stage, by field.
    bad = write_spec(tmp_path, {"uri": "gated.jit"}, [{"name": "sr", "value": 16000.5}])
    refused = kiln_optimize(bad, tmp_path / "bad")
    assert refused.returncode == 2
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "spec.constants[0].value: 16000.5 is not a whole number, and the argument is int" in said


def test_an_onnx_files_scalar_input_is_folded_in_and_left_out_of_requests(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    model = TensorRate().eval()
    example = (torch.from_numpy(X), torch.tensor(16000))
    torch.onnx.export(
        model,
        example,
        str(tmp_path / "gated.onnx"),
        input_names=["x", "sr"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        dynamo=False,
    )
    spec = write_spec(
        tmp_path, {"uri": "gated.onnx"}, [{"name": "sr", "value": 16000}], backends=["onnxruntime"]
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    metadata, y = served(out, X)
    with torch.inference_mode():
        want = model(*example).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    assert metadata["parameters"]["constants"] == {"sr": 16000}
    status = json.loads((out / "status.json").read_text())
    assert status["phase"] == "NoImprovement"  # the folded file is the kept baseline

    unknown = write_spec(tmp_path, {"uri": "gated.onnx"}, [{"name": "rate", "value": 1}])
    refused = kiln_optimize(unknown, tmp_path / "unknown")
    assert refused.returncode == 2
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "spec.constants[0].name: 'rate' is not an input of the model" in said
