"""OpenVINO candidates end to end with the real `openvino` and `nncf` packages: a Hugging Face
encoder (integer inputs, a dynamic sequence axis, attention) converted to an FP32 IR and
served with `kiln serve`; a convolutional model quantized to INT8 by NNCF on the calibration
set, gated, served, and reused from the store by a second run; and its bf16 candidates
(OpenVINO's and AOTInductor's) on a CPU that computes bf16."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kiln.runtime.cpu_isa import bf16_units, cpu_flags
from kiln.runtime.ov_runner import InferencePrecision, OpenVinoRunner
from kiln.storage.objects import parse_uri
from tests.conftest import FAST_BENCHMARK
from tests.integration.test_hf_models import (
    OUTPUTS,
    bert_spec,
    build,
    cpu_target,
    feeds,
    kiln_optimize,
    write_example,
    write_spec,
)
from tests.integration.test_serve import served

openvino = pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("transformers")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONV_FACTORY = textwrap.dedent(
    """
    import torch


    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )
            self.head = torch.nn.Linear(32, 10)

        def forward(self, image):
            return self.head(self.features(image))


    def build():
        torch.manual_seed(0)
        return Net().eval()
    """
)


def test_a_bert_encoder_runs_and_serves_as_an_fp32_openvino_ir(tmp_path: Path) -> None:
    write_example(tmp_path)
    spec = bert_spec(
        tmp_path,
        backends=["pytorch", "openvino"],
        precisions=["fp32"],
        accuracy={"samples": 8, "uri": "calibration"},  # the model's own token ids
    )
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    target = cpu_target(out)
    assert target["environment"]["openvino"] == openvino.__version__.split("-")[0]
    candidate = {c["name"]: c for c in target["candidates"]}["openvino-cpu-fp32"]
    assert candidate["state"] == "OK", candidate
    assert candidate["accuracy"]["passed"] is True, candidate
    assert candidate["artifact"].endswith("/model.xml")
    assert target["selected"] == "openvino-cpu-fp32", target["selectionReason"]

    given = feeds(20)  # a length the engine was not traced at: the axis stays dynamic
    with torch.inference_mode():
        want = build(tmp_path)(**{n: torch.from_numpy(a) for n, a in given.items()})
    answered = served(out, "bert", given)
    assert list(answered) == OUTPUTS
    for name in OUTPUTS:
        np.testing.assert_allclose(answered[name], want[name].numpy(), rtol=1e-3, atol=1e-4)


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, 32, 32)).astype(np.float32)


def conv_example(root: Path) -> None:
    (root / "conv_models.py").write_text(CONV_FACTORY)
    namespace: dict[str, Any] = {}
    exec(compile(CONV_FACTORY, "conv_models.py", "exec"), namespace)
    torch.save(namespace["build"]().state_dict(), root / "weights.pt")
    (root / "calibration").mkdir()
    np.savez(root / "calibration" / "shard-0.npz", image=images(48, 0))


def conv_spec(root: Path, **extra: Any) -> Path:
    fields: dict[str, Any] = {
        "source": {"uri": "weights.pt", "factory": "conv_models:build"},
        "inputs": [{"name": "image", "shape": [-1, 3, 32, 32]}],
        "outputs": ["logits"],
        "backends": ["pytorch", "openvino"],
        "precisions": ["int8"],
        "calibration": {"uri": "calibration", "samples": 40},
    }
    return write_spec(root, "conv", **{**fields, **extra})


def test_nncf_int8_is_gated_served_and_reused_from_the_store(tmp_path: Path) -> None:
    conv_example(tmp_path)
    spec = conv_spec(tmp_path)
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    target = cpu_target(out)
    candidate = {c["name"]: c for c in target["candidates"]}["openvino-cpu-int8"]
    assert candidate["state"] == "OK", candidate
    assert candidate["accuracy"]["passed"] is True, candidate
    assert "NNCF post-training" in candidate["note"], candidate
    assert target["selected"] == "openvino-cpu-int8", target["selectionReason"]

    # The IR really holds INT8: NNCF's FakeQuantize ops, which OpenVINO runs as INT8 kernels.
    xml = Path(parse_uri(candidate["artifact"]).key)
    ops = {op.get_type_name() for op in openvino.Core().read_model(str(xml)).get_ordered_ops()}
    assert "FakeQuantize" in ops

    batch = images(3, 9)
    runner = OpenVinoRunner("check", xml, ["logits"], threads=1)
    runner.prepare({"image": batch})
    runner.run()
    (engine,) = runner.outputs()
    np.testing.assert_array_equal(served(out, "conv", {"image": batch})["logits"], engine)

    # Measured again (another benchmark setting), built from the same model and calibration:
    # the IR is the stored one, not quantized again.
    longer = conv_spec(tmp_path, benchmark={**FAST_BENCHMARK, "minRounds": 3})
    again = kiln_optimize(longer, tmp_path / "again")
    assert again.returncode == 0, again.stdout + again.stderr
    reused = {c["name"]: c for c in cpu_target(tmp_path / "again")["candidates"]}
    assert reused["openvino-cpu-int8"]["artifact"] == candidate["artifact"], reused
    assert reused["openvino-cpu-int8"]["artifactReused"] is True, reused


@pytest.mark.skipif(
    bf16_units(cpu_flags()) is None, reason="this CPU has neither AVX512-BF16 nor AMX-BF16"
)
def test_bf16_candidates_compute_in_bf16_and_pass_their_own_gate(tmp_path: Path) -> None:
    conv_example(tmp_path)
    spec = conv_spec(tmp_path, backends=["pytorch", "openvino", "aotinductor"], precisions=["bf16"])
    out = tmp_path / "out"
    done = kiln_optimize(spec, out)
    assert done.returncode == 0, done.stdout + done.stderr
    target = cpu_target(out)
    candidates = {c["name"]: c for c in target["candidates"]}
    for name in ("openvino-cpu-bf16", "aotinductor-cpu-bf16"):
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] is True, candidates[name]
        assert "0.08 + 0.08*|ref|" in candidates[name]["accuracy"]["criterion"]
    # bf16 is the FP32 IR compiled with a bf16 hint: the hint is what the engine really used.
    xml = Path(parse_uri(candidates["openvino-cpu-bf16"]["artifact"]).key)
    hint = InferencePrecision.BF16
    bf16 = OpenVinoRunner("check", xml, ["logits"], threads=1, precision=hint)
    assert bf16.property("INFERENCE_PRECISION_HINT") == "bf16"
    fp32 = OpenVinoRunner("check", xml, ["logits"], threads=1)
    assert fp32.property("INFERENCE_PRECISION_HINT") == "f32"
    batch = {"image": images(3, 5)}
    served_logits = served(out, "conv", batch)["logits"]
    fp32.prepare(batch)
    fp32.run()
    (reference,) = fp32.outputs()
    error = np.abs(served_logits - reference)
    assert 0 < float(error.max()) <= 0.08 + 0.08 * float(np.abs(reference).max())
