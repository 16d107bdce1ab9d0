"""timm classifiers as users bring them, with the real `timm` package (built from its registry
with random weights: nothing is downloaded): a vision transformer as a factory source with
INT8 from the default quantizer (NNCF), and a ConvNeXt exported by the user to a `.pt2`
program with a dynamic batch. `kiln optimize` builds each and `kiln serve` answers with what
the package's own model answers."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.integration.test_hf_models import cpu_target, kiln_optimize, write_spec
from tests.integration.test_serve import served

timm = pytest.importorskip("timm")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIZE = 64  # small images keep the test short; both models take any size their patches divide
FACTORY = textwrap.dedent(
    f"""
    import timm
    import torch


    def build(name="vit_tiny_patch16_224", **options):
        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10, **options).eval()


    def vit():
        return build(img_size={SIZE})
    """
)
IMAGE = {"name": "x", "shape": [-1, 3, SIZE, SIZE]}  # timm names the image `x`


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, SIZE, SIZE)).astype(np.float32)


def write_example(root: Path) -> dict[str, Any]:
    (root / "timm_models.py").write_text(FACTORY)
    (root / "calibration").mkdir()
    np.savez(root / "calibration" / "shard-0.npz", x=images(40, 0))
    namespace: dict[str, Any] = {}
    exec(compile(FACTORY, "timm_models.py", "exec"), namespace)
    return namespace


def served_logits(out: Path, name: str, batch: np.ndarray) -> np.ndarray:
    answered = served(out, name, {"x": batch})
    assert list(answered) == ["logits"]
    return answered["logits"]


def test_a_timm_vit_factory_builds_int8_and_serves_the_packages_answers(tmp_path: Path) -> None:
    example = write_example(tmp_path)
    model = example["vit"]()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    spec = write_spec(
        tmp_path,
        source={"uri": "weights.pt", "factory": "timm_models:vit"},
        inputs=[IMAGE],
        outputs=["logits"],
        backends=["pytorch", "onnxruntime", "aotinductor"],
        precisions=["fp32", "int8"],
        calibration={"uri": "calibration", "samples": 32},  # NNCF, the default
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    for name in ("aotinductor-cpu-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"):
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] in (True, False)  # judged, not crashed

    batch = images(3, 7)
    with torch.inference_mode():
        want = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(served_logits(out, "vit", batch), want, rtol=1e-3, atol=1e-4)


def test_a_timm_convnext_program_with_a_dynamic_batch_serves_the_packages_answers(
    tmp_path: Path,
) -> None:
    example = write_example(tmp_path)
    model = example["build"]("convnext_atto")
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    example_input = (torch.from_numpy(images(2, 1)),)
    program = torch.export.export(model, example_input, dynamic_shapes=({0: batch_dim},))
    torch.export.save(program, tmp_path / "convnext.pt2")
    spec = write_spec(
        tmp_path,
        source={"uri": "convnext.pt2"},
        inputs=[IMAGE],
        outputs=["logits"],
        # AOTInductor compiles the program for minutes on 2 cores and is covered by the ViT
        # above; what this test adds is the user's `.pt2` with a dynamic batch, through ONNX.
        backends=["pytorch", "onnxruntime"],
        precisions=["fp32"],
        accuracy={"samples": 4, "uri": "calibration"},
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    assert candidates["onnxruntime-cpu-fp32"]["state"] == "OK", candidates
    assert candidates["onnxruntime-cpu-fp32"]["accuracy"]["passed"] is True, candidates

    batch = images(3, 8)
    with torch.inference_mode():
        want = model(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(served_logits(out, "convnext", batch), want, rtol=1e-3, atol=1e-4)
