"""Dynamic axes beyond the batch, end to end: the README's text encoder (a sequence axis that
`input_ids` and `attention_mask` share) runs as printed; every engine answers as PyTorch at
both ends of the range and between; `kiln serve` answers NVIDIA's client at two lengths and
refuses one out of range; a range the model cannot take stops the run before any build."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import tritonclient.http as triton_http
import yaml
from tritonclient.utils import InferenceServerException

from kiln.api.spec import OptimizedModel
from kiln.builder.export import export_onnx
from kiln.builder.torch_source import check_torch_signature
from kiln.runtime.aoti_runner import AotiRunner
from kiln.runtime.base import infer
from tests.conftest import FAST_BENCHMARK
from tests.fixtures.tiny_models import TinyTagger, save_encoder_program
from tests.integration.test_input_binding import local_path, optimize, readme_spec, target_of
from tests.integration.test_serve import start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAMES = ["input_ids", "attention_mask"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's encoder spec with only the benchmark made short, optimized. A short
    benchmark's intervals are wide, and promotion needs their lower bound to meet
    minSpeedup: it is lowered so the test asserts the build, not the machine's quiet."""
    root = tmp_path_factory.mktemp("encoder")
    document = readme_spec("encoder")
    spec = document["spec"]
    spec["benchmark"] = {**FAST_BENCHMARK, "shapes": spec["benchmark"]["shapes"]}
    spec["selection"] = {**spec.get("selection", {}), "minSpeedup": 0.01}
    save_encoder_program(root / spec["source"]["uri"], 8, 128)
    (root / "encoder.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = optimize(root / "encoder.yaml", root / "out", "--artifacts", str(root / "store"))
    assert result.exit_code == 0, result.output
    return root


def tokens(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """Ids and a mask whose first row is padded after half its length."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[0, length // 2 :] = 0
    return {
        "input_ids": rng.integers(0, 100, (batch, length)).astype(np.int64),
        "attention_mask": mask,
    }


@functools.cache
def program(path: Path) -> Any:
    return torch.export.load(str(path)).module()


def pytorch(root: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = program(root / "encoder.pt2")
    with torch.inference_mode():
        # Called as it was traced: by position.
        out = module(*(torch.from_numpy(feeds[n]) for n in NAMES))
    return [t.numpy() for t in out]


def test_the_readme_text_encoder_runs_as_printed(encoder: Path) -> None:
    status = json.loads((encoder / "out" / "status.json").read_text())
    assert status["phase"] == "Ready", status
    target = target_of(encoder / "out")
    assert target["selected"], target
    measured = [c for c in target["candidates"] if c["state"] != "SKIPPED"]
    assert {c["name"] for c in measured} == {
        "pytorch-cpu-fp32",
        "onnxruntime-cpu-fp32",
        "aotinductor-cpu-fp32",
    }
    for candidate in measured:
        assert candidate["state"] == "OK", candidate
        # Every batch size at every listed length, the deciding (first) one first.
        points = [(b["batchSize"], b["lengths"]) for b in candidate["benchmarks"]]
        assert points == [(b, {"seq": s}) for b in (1, 8) for s in (64, 16, 128)], points
        assert candidate["lengths"] == {"seq": 64}
    report = (encoder / "out" / "report.md").read_text()
    assert "| 8 (seq 128) |" in report


@pytest.mark.parametrize("length", [8, 37, 128])
def test_every_engine_answers_as_pytorch_over_the_range(encoder: Path, length: int) -> None:
    feeds = tokens(3, length, seed=length)
    expected = pytorch(encoder, feeds)
    status = json.loads((encoder / "out" / "status.json").read_text())
    session = onnxruntime.InferenceSession(str(local_path(status["onnxArtifact"])))
    candidates = {c["name"]: c for c in target_of(encoder / "out")["candidates"]}
    package = local_path(candidates["aotinductor-cpu-fp32"]["artifact"])
    engines = {
        "onnxruntime": session.run(["hidden", "pooled"], feeds),
        "aotinductor": infer(AotiRunner("aoti", package, NAMES, "cpu"), feeds),
    }
    for name, outputs in engines.items():
        assert outputs[0].shape == (3, length, 32), name
        for got, want in zip(outputs, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def server(encoder: Path) -> Iterator[str]:
    process, url = start(encoder / "out", "--batch-window-ms", "5")
    yield url.removeprefix("http://")
    process.terminate()
    process.wait(timeout=10)


def request(feeds: dict[str, np.ndarray]) -> list[Any]:
    inputs = []
    for name, array in feeds.items():
        tensor = triton_http.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array, binary_data=True)
        inputs.append(tensor)
    return inputs


def test_served_to_tritonclient_at_two_lengths(encoder: Path, server: str) -> None:
    client = triton_http.InferenceServerClient(server)
    meta = client.get_model_metadata("encoder")
    assert [i["shape"] for i in meta["inputs"]] == [[-1, -1], [-1, -1]]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
        "hidden": [-1, -1, 32],
        "pooled": [-1, 32],
    }
    for length in (12, 100):
        feeds = tokens(2, length, seed=length)
        result = client.infer("encoder", request(feeds))
        for name, want in zip(["hidden", "pooled"], pytorch(encoder, feeds), strict=True):
            got = result.as_numpy(name)
            assert got is not None
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
    with pytest.raises(InferenceServerException, match=r"outside \[8, 128\]"):
        client.infer("encoder", request(tokens(1, 129, seed=0)))
    # The two inputs share `seq`: a mask of another length than the ids is refused.
    mismatched = tokens(1, 16, seed=0) | {"attention_mask": np.ones((1, 17), np.int64)}
    with pytest.raises(InferenceServerException, match="share one length"):
        client.infer("encoder", request(mismatched))


def test_concurrent_requests_of_mixed_lengths_get_their_own_answers(
    encoder: Path, server: str
) -> None:
    """Requests of two lengths arriving together: the batcher joins only equal shapes, so
    every answer is the model's for that request alone, never one padded or mixed."""
    lengths = [12, 20, 12, 20, 12, 12, 20, 20] * 2

    def ask(i: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        feeds = tokens(1, lengths[i], seed=100 + i)
        client = triton_http.InferenceServerClient(server)
        pooled = client.infer("encoder", request(feeds)).as_numpy("pooled")
        assert pooled is not None
        return feeds, pooled

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(len(lengths))))
    for feeds, pooled in answers:
        np.testing.assert_allclose(pooled, pytorch(encoder, feeds)[1], rtol=1e-4, atol=1e-4)


def test_a_range_the_model_cannot_take_is_refused_before_building(tmp_path: Path) -> None:
    document = readme_spec("encoder")
    spec = document["spec"]
    for tensor in spec["inputs"]:
        tensor["dynamic"][0]["max"] = 256  # the program was exported with max=128
    save_encoder_program(tmp_path / spec["source"]["uri"], 8, 128)
    (tmp_path / "encoder.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = optimize(tmp_path / "encoder.yaml", tmp_path / "out")
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(
        "error: spec.inputs[0].dynamic: the model does not accept input_ids[1, 256]:int64"
    ), line
    assert (
        not (tmp_path / "out" / "status.json").exists()
        or "Ready" not in (tmp_path / "out" / "status.json").read_text()
    )


def test_a_torchscript_archive_exports_with_its_sequence_axis(tmp_path: Path) -> None:
    """The TorchScript exporter names the axes (`dynamic_axes`) instead of tracing symbols."""
    torch.manual_seed(0)
    model = TinyTagger().eval()
    example = (torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    torch.jit.trace(model, example).save(str(tmp_path / "tagger.ts"))  # type: ignore[no-untyped-call]
    document = readme_spec("encoder")
    document["spec"]["source"] = {"uri": "tagger.ts"}
    document["spec"]["outputs"] = ["tags", "pooled"]
    spec = OptimizedModel.model_validate(document).spec
    loaded = torch.jit.load(str(tmp_path / "tagger.ts"))  # type: ignore[no-untyped-call]
    export_onnx(check_torch_signature(loaded, spec), spec, tmp_path / "tagger.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "tagger.onnx"))
    assert [i.shape for i in session.get_inputs()] == [["batch", "seq"], ["batch", "seq"]]
    for length in (8, 50, 128):
        feeds = tokens(3, length, seed=length)
        with torch.inference_mode():
            expected = model(*(torch.from_numpy(feeds[n]) for n in NAMES))
        for got, want in zip(session.run(None, feeds), expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


# What each quantizer's INT8 candidate says of how it was built: ONNX Runtime's narrows to the
# matrix products once the mask's -inf defeats its calibrator; NNCF's transformer scheme
# quantizes only those from the start.
_PADDED_NOTES = {
    "onnxruntime": "INT8 in MatMul, Gemm and Conv only",
    "nncf": "NNCF post-training, transformer scheme, NNCF's default ranges, 40 samples",
}


@pytest.mark.parametrize("quantizer", list(_PADDED_NOTES))
def test_int8_of_a_padded_encoder_quantizes_its_matrix_products(
    tmp_path: Path, quantizer: str
) -> None:
    """Calibration shards of two lengths, half the samples padded: the padding mask puts
    -inf into the attention scores, which no INT8 range holds. The INT8 candidate is built
    from the matrix products' Q/DQ, passes its held-out gate, and says how it was built."""
    document = readme_spec("encoder")
    spec = document["spec"]
    spec["precisions"] = ["fp32", "int8"]
    spec["backends"] = ["pytorch", "onnxruntime"]
    spec["calibration"] = {"uri": "calibration", "samples": 40, "quantizer": quantizer}
    spec["accuracy"] = {"samples": 8}
    spec["benchmark"] = dict(FAST_BENCHMARK)
    save_encoder_program(tmp_path / spec["source"]["uri"], 8, 128)
    (tmp_path / "calibration").mkdir()
    for shard, length in enumerate((24, 40)):
        feeds = tokens(24, length, seed=shard)
        feeds["attention_mask"][::2, length - 6 :] = 0
        np.savez(
            tmp_path / "calibration" / f"shard{shard}.npz",
            input_ids=feeds["input_ids"],
            attention_mask=feeds["attention_mask"],
        )
    (tmp_path / "encoder.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = optimize(tmp_path / "encoder.yaml", tmp_path / "out")
    assert result.exit_code == 0, result.output
    candidates = {c["name"]: c for c in target_of(tmp_path / "out")["candidates"]}
    int8 = candidates["onnxruntime-cpu-int8"]
    assert int8["state"] == "OK", int8
    assert int8["note"].startswith(_PADDED_NOTES[quantizer]), int8
    assert int8["accuracy"]["passed"], int8["accuracy"]
    assert "note" not in candidates["onnxruntime-cpu-fp32"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"onnxruntime-cpu-int8@cpu: {_PADDED_NOTES[quantizer]}" in report
