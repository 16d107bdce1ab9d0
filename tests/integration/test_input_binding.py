"""Inputs bind to the model's arguments by name, end to end: a spec that lists a two-input
model's inputs in the other order runs every stage, and every engine answers as the model
called by name; an input after an argument left to its default goes by keyword; the README's
torchvision-style example runs as it is printed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kiln.builder.export import export_onnx
from kiln.builder.torch_source import TorchModel, bind_inputs
from kiln.cli.main import app
from kiln.runtime.aoti_runner import AotiRunner
from kiln.runtime.base import infer
from kiln.runtime.binding import Call
from kiln.runtime.torch_runner import TorchRunner
from kiln.storage.objects import parse_uri
from tests.conftest import FAST_BENCHMARK, make_tiny_example, tiny_spec
from tests.fixtures.specs import minimal_spec
from tests.fixtures.tiny_models import build_scaled, save_classifier_program

pytestmark = [pytest.mark.integration, pytest.mark.slow]
README = Path(__file__).parents[2] / "README.md"
FP32_BACKENDS = ["pytorch", "aotinductor", "onnxruntime", "torch-compile"]


def optimize(spec_path: Path, out: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        app, ["optimize", str(spec_path), "-o", str(out), "-q", *extra], catch_exceptions=False
    )


def target_of(out: Path) -> dict[str, Any]:
    status: dict[str, Any] = json.loads((out / "status.json").read_text())
    return next(t for t in status["targets"] if t["name"] == "cpu")


def local_path(uri: str) -> Path:
    return Path(parse_uri(uri).key)


def test_inputs_listed_in_the_other_order_bind_by_name(tmp_path: Path) -> None:
    example = make_tiny_example(tmp_path, calibration=False)
    image = {"shape": [-1, 3, 16, 16], "dtype": "float32"}
    spec = tiny_spec(
        # Scaled.forward(self, x, scale, shift=0.0): listed as (scale, x), shift left out.
        source={"uri": "weights.pt", "factory": "tiny_models:build_scaled"},
        inputs=[{"name": "scale", **image}, {"name": "x", **image}],
        backends=FP32_BACKENDS,
        precisions=["fp32"],
        calibration=None,
        selection={"minSpeedup": 0.01},
    )
    out = tmp_path / "out"
    result = optimize(example.write_spec(spec), out)
    assert result.exit_code == 0, result.output
    target = target_of(out)
    candidates = {c["name"]: c for c in target["candidates"]}
    assert set(candidates) == {f"{b}-cpu-fp32" for b in FP32_BACKENDS}
    for candidate in candidates.values():
        assert candidate["state"] == "OK", candidate
        assert candidate["accuracy"]["passed"] is True, candidate

    # The gates compare engines with the PyTorch reference; these compare them with the model
    # called by name, which a reference bound the wrong way round would not pass.
    rng = np.random.default_rng(5)
    feeds = {n: rng.standard_normal((3, 3, 16, 16)).astype(np.float32) for n in ("x", "scale")}
    with torch.inference_mode():
        by_name = {n: torch.from_numpy(a) for n, a in feeds.items()}
        expected = build_scaled().eval()(**by_name).numpy()
    status = json.loads((out / "status.json").read_text())
    session = onnxruntime.InferenceSession(str(local_path(status["onnxArtifact"])))
    (onnx_out,) = session.run(["logits"], feeds)
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)
    # A package takes the inputs in the spec's order, as `kiln serve` passes them.
    package = local_path(candidates["aotinductor-cpu-fp32"]["artifact"])
    (package_out,) = infer(AotiRunner("aoti", package, ["scale", "x"], "cpu"), feeds)
    np.testing.assert_allclose(package_out, expected, rtol=1e-4, atol=1e-5)


class Gapped(torch.nn.Module):
    """`shift` between x and scale, left to its default: scale can only go by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(
        self,
        x: torch.Tensor,
        shift: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if scale is None:
            raise TypeError("scale is required")
        y: torch.Tensor = self.linear(x * torch.sigmoid(scale))
        return y if shift is None else y + shift


def test_an_input_after_a_default_goes_by_keyword_to_onnx_and_to_pytorch(tmp_path: Path) -> None:
    spec = minimal_spec(
        inputs=[{"name": "scale", "shape": [-1, 3]}, {"name": "x", "shape": [-1, 3]}]
    )
    module = Gapped().eval()
    model = TorchModel(module, bind_inputs(module, spec))
    assert model.call == Call(("x",), ("scale",))
    export_onnx(model, spec, tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    feeds = {n: rng.standard_normal((3, 3)).astype(np.float32) for n in ("scale", "x")}
    with torch.inference_mode():
        expected = module(**{n: torch.from_numpy(a) for n, a in feeds.items()}).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    assert sorted(i.name for i in session.get_inputs()) == ["scale", "x"]
    np.testing.assert_allclose(session.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-6)
    (eager,) = infer(TorchRunner("eager", module, model.call, "cpu"), feeds)
    np.testing.assert_allclose(eager, expected)


def readme_spec(name: str) -> dict[str, Any]:
    """One of the README's worked examples: the OptimizedModel of that name among its YAML
    blocks."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    documents = [yaml.safe_load(b) for b in blocks]
    (document,) = [
        d
        for d in documents
        if isinstance(d, dict)
        and d.get("kind") == "OptimizedModel"
        and d.get("metadata", {}).get("name") == name
    ]
    assert isinstance(document, dict)
    return document


def readme_error() -> str:
    """The error the README shows for an input name the model lacks."""
    match = re.search(r"`(error: spec\.inputs\[0\]\.name: [^`]*)`", README.read_text())
    assert match is not None, "the README shows no error for a wrong input name"
    return match.group(1)


def test_the_readme_torchvision_example_runs_as_printed(tmp_path: Path) -> None:
    document = readme_spec("resnet50")
    spec = document["spec"]
    (tensor,) = spec["inputs"]
    assert tensor["name"] == "x"  # torchvision's own argument name, not renamed
    # Only the image size and the benchmark are made small for the test.
    size = 32
    tensor["shape"] = [*tensor["shape"][:2], size, size]
    spec["benchmark"] = dict(FAST_BENCHMARK)
    save_classifier_program(tmp_path / spec["source"]["uri"], size)
    spec_path = tmp_path / "classifier.yaml"
    spec_path.write_text(yaml.safe_dump(document, sort_keys=False))
    artifacts = ("--artifacts", str(tmp_path / "artifacts"))

    result = optimize(spec_path, tmp_path / "out", *artifacts)
    assert result.exit_code == 0, result.output
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["phase"] == "Ready", status
    target = target_of(tmp_path / "out")
    assert target["selected"], target
    for candidate in target["candidates"]:
        if candidate["state"] != "SKIPPED":
            assert candidate["state"] == "OK", candidate

    # The error the README shows for a wrong name is the one a user gets.
    tensor["name"] = "image"
    spec_path.write_text(yaml.safe_dump(document, sort_keys=False))
    result = optimize(spec_path, tmp_path / "wrong", *artifacts)
    assert result.exit_code == 2, result.output
    assert readme_error() in result.stderr.splitlines(), result.stderr
