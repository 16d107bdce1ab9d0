"""A Hugging Face encoder as users bring one, with the real `transformers` package (built from a
config with random weights: nothing is downloaded): a factory source with three integer inputs
(`token_type_ids` has a vocabulary of 2) and a `ModelOutput`, the spec listing its outputs in
another order than the model returns them; INT8 with the default quantizer (NNCF's transformer
scheme); and the same model as a `.pt2` program, which loads only with `source.imports`."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.storage.objects import parse_uri
from tests.conftest import FAST_BENCHMARK
from tests.integration.test_serve import KILN, served

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACTORY = textwrap.dedent(
    """
    import torch
    from transformers import BertConfig, BertModel


    def build():
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
        )
        return BertModel(config).eval()
    """
)
SEQ = {"axis": 1, "name": "seq", "min": 4, "opt": 16, "max": 32}
OUTPUTS = ["pooler_output", "last_hidden_state"]  # BertModel returns them the other way round


def text_input(name: str) -> dict[str, Any]:
    return {"name": name, "shape": [-1, -1], "dtype": "int64", "dynamic": [SEQ]}


def write_example(root: Path) -> None:
    (root / "hf_models.py").write_text(FACTORY)
    torch.save(build(root).state_dict(), root / "weights.pt")
    rng = np.random.default_rng(0)
    (root / "calibration").mkdir()
    for i, length in enumerate((12, 24)):
        mask = np.ones((24, length), np.int64)
        mask[:, length - 3 :] = 0  # padded: the mask adds finfo(float32).min to the scores
        np.savez(
            root / "calibration" / f"shard-{i}.npz",
            input_ids=rng.integers(0, 100, (24, length)).astype(np.int64),
            attention_mask=mask,
            token_type_ids=rng.integers(0, 2, (24, length)).astype(np.int64),
        )


def build(root: Path) -> Any:
    namespace: dict[str, Any] = {}
    exec(compile((root / "hf_models.py").read_text(), "hf_models.py", "exec"), namespace)
    return namespace["build"]()


def write_spec(root: Path, name: str = "bert", **spec: Any) -> Path:
    """A spec with this file's short test settings; `spec` adds or overrides fields."""
    document = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": name},
        "spec": {
            "outputs": OUTPUTS,
            "batchSizes": [1, 4],
            "accuracy": {"samples": 8},
            "benchmark": dict(FAST_BENCHMARK),
            "artifacts": {"uri": "artifacts"},
            "selection": {"minSpeedup": 0.01},
            **spec,
        },
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def optimize(spec: Path, out: Path) -> Any:
    return CliRunner().invoke(app, ["optimize", str(spec), "-o", str(out), "-q"])


def kiln_optimize(spec: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """`kiln optimize` in a process of its own."""
    command = [KILN, "optimize", str(spec), "-o", str(out), "-q"]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def cpu_target(out: Path) -> dict[str, Any]:
    status = json.loads((out / "status.json").read_text())
    return next(t for t in status["targets"] if t["name"] == "cpu")


def feeds(length: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "input_ids": rng.integers(0, 100, (2, length)).astype(np.int64),
        "attention_mask": np.ones((2, length), np.int64),
        "token_type_ids": rng.integers(0, 2, (2, length)).astype(np.int64),
    }


def bert_spec(root: Path, **spec: Any) -> Path:
    """The BERT factory of `write_example` with its three integer inputs; `spec` adds the
    rest."""
    names = ["input_ids", "attention_mask", "token_type_ids"]
    source = {"uri": "weights.pt", "factory": "hf_models:build"}
    return write_spec(root, source=source, inputs=[text_input(n) for n in names], **spec)


def test_a_bert_factory_with_token_types_builds_int8_and_serves_each_output_by_name(
    tmp_path: Path,
) -> None:
    write_example(tmp_path)
    spec = bert_spec(
        tmp_path,
        backends=["pytorch", "onnxruntime", "aotinductor"],
        precisions=["fp32", "int8"],
        calibration={"uri": "calibration", "samples": 32},  # NNCF, the default
    )
    out = tmp_path / "out"
    result = optimize(spec, out)
    assert result.exit_code == 0, result.output
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    for name in ("aotinductor-cpu-fp32", "onnxruntime-cpu-fp32", "onnxruntime-cpu-int8"):
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] in (True, False)  # judged, not crashed

    given = feeds(20)
    with torch.inference_mode():
        want = build(tmp_path)(**{n: torch.from_numpy(a) for n, a in given.items()})
    status = json.loads((out / "status.json").read_text())
    session = onnxruntime.InferenceSession(parse_uri(status["onnxArtifact"]).key)
    got = dict(zip(OUTPUTS, session.run(OUTPUTS, given), strict=True))
    for name in OUTPUTS:
        np.testing.assert_allclose(got[name], want[name].numpy(), rtol=1e-4, atol=1e-5)

    answered = served(out, "bert", given)
    assert list(answered) == OUTPUTS
    for name in OUTPUTS:
        np.testing.assert_allclose(answered[name], want[name].numpy(), rtol=1e-3, atol=1e-4)


def test_a_bert_program_loads_with_its_imports_and_says_which_it_lacks(tmp_path: Path) -> None:
    write_example(tmp_path)
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=4, max=32)
    example = (torch.randint(0, 100, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    program = torch.export.export(
        build(tmp_path),
        example,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
    )
    torch.export.save(program, tmp_path / "encoder.pt2")
    common: dict[str, Any] = {
        "inputs": [text_input("input_ids"), text_input("attention_mask")],
        "backends": ["pytorch", "aotinductor"],
        "precisions": ["fp32"],
    }
    # In this process transformers is imported, so its types are registered: only a fresh
    # process shows what is missing. `kiln` as a subprocess is that fresh process.
    bare = write_spec(tmp_path, source={"uri": "encoder.pt2"}, **common)
    refused = kiln_optimize(bare, tmp_path / "bare")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "transformers.modeling_outputs.BaseModelOutputWithPoolingAndCrossAttentions" in said
    assert "add `imports: [transformers.modeling_outputs]` to spec.source" in said

    imports = {"uri": "encoder.pt2", "imports": ["transformers.modeling_outputs"]}
    done = kiln_optimize(write_spec(tmp_path, source=imports, **common), tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    candidates = {c["name"]: c for c in cpu_target(tmp_path / "out")["candidates"]}
    assert candidates["aotinductor-cpu-fp32"]["state"] == "OK", candidates


T5_FACTORY = textwrap.dedent(
    """
    import torch
    from transformers import T5Config, T5EncoderModel


    def build():
        torch.manual_seed(0)
        config = T5Config(vocab_size=100, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2)
        return T5EncoderModel(config).eval()
    """
)


def test_a_t5_encoder_the_dynamo_exporter_refuses_is_traced_and_keeps_its_dropout_off(
    tmp_path: Path,
) -> None:
    """T5's attention views a transposed tensor, which the dynamo exporter's symbolic shapes
    refuse: the TorchScript-based exporter traces it instead. That exporter restores the mode
    it found on the module it exports; the module must be found in eval mode, or every
    dropout of the model is on for the engines measured after it (the baseline's answers
    then differ from the reference's, and AOTInductor compiles the dropout in)."""
    write_example(tmp_path)  # BERT's, for its shards: input_ids and attention_mask are used
    (tmp_path / "t5_models.py").write_text(T5_FACTORY)
    namespace: dict[str, Any] = {}
    exec(compile(T5_FACTORY, "t5_models.py", "exec"), namespace)
    torch.save(namespace["build"]().state_dict(), tmp_path / "t5.pt")
    spec = write_spec(
        tmp_path,
        source={"uri": "t5.pt", "factory": "t5_models:build"},
        inputs=[text_input("input_ids"), text_input("attention_mask")],
        outputs=["last_hidden_state"],
        backends=["pytorch", "onnxruntime", "aotinductor"],
        precisions=["fp32"],
        accuracy={"samples": 4, "uri": "calibration"},
    )
    out = tmp_path / "out"
    command = [KILN, "optimize", str(spec), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exported with the TorchScript-based exporter" in " ".join(done.stderr.split())
    candidates = {c["name"]: c for c in cpu_target(out)["candidates"]}
    for name in ("pytorch-cpu-fp32", "onnxruntime-cpu-fp32", "aotinductor-cpu-fp32"):
        assert candidates[name]["state"] == "OK", candidates[name]
        assert candidates[name]["accuracy"]["passed"] is True, candidates[name]["accuracy"]
