"""Which engines build and pass their gates for models from the packages users bring: Hugging
Face `transformers` and `timm` models built from small configs with random weights (nothing is
downloaded), each run through `kiln optimize` (PyTorch eager, AOTInductor, ONNX Runtime FP32
and INT8 on the CPU) in a process of its own, one line per model:

    .venv/bin/python benchmarks/model_sweep.py [--models distilbert t5-encoder ...] [--keep DIR]

A line says each candidate's state and its gate (`OK/pass`, `OK/gate-fail`, `FAILED` with the
reason, `SKIPPED`), or the run's error. This is an acceptance sweep, not a benchmark: its
measurements are the shortest Kiln takes (2-3 rounds) and mean nothing. INT8 gates on random
weights and random inputs fail often; that is the gate deciding, not a fault. The whole sweep
takes about 20 minutes on this project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

KILN = str(Path(sys.executable).parent / "kiln")

FACTORIES = textwrap.dedent(
    """
    import torch


    def _hf(config_name, model_name, **config):
        import transformers

        torch.manual_seed(0)
        config = getattr(transformers, config_name)(**config)
        return getattr(transformers, model_name)(config).eval()


    def _timm(name, **options):
        import timm

        torch.manual_seed(0)
        return timm.create_model(name, pretrained=False, num_classes=10, **options).eval()


    TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=37, max_position_embeddings=70)


    def distilbert():
        return _hf("DistilBertConfig", "DistilBertModel", vocab_size=100, dim=32, n_layers=2,
                   n_heads=2, hidden_dim=37, max_position_embeddings=64)


    def roberta():
        return _hf("RobertaConfig", "RobertaModel", **TEXT)


    def electra():
        return _hf("ElectraConfig", "ElectraForSequenceClassification", embedding_size=16,
                   num_labels=3, **TEXT)


    def gpt2():
        return _hf("GPT2Config", "GPT2LMHeadModel", vocab_size=100, n_embd=32, n_layer=2,
                   n_head=2, n_positions=64, use_cache=False)


    def t5_encoder():
        return _hf("T5Config", "T5EncoderModel", vocab_size=100, d_model=32, d_kv=16, d_ff=37,
                   num_layers=2, num_heads=2)


    def vit():
        return _hf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8,
                   hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=37, num_labels=5)


    def wav2vec2():
        return _hf("Wav2Vec2Config", "Wav2Vec2Model", hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
                   conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                   num_conv_pos_embedding_groups=2)


    def efficientnet_b0():
        return _timm("efficientnet_b0")


    def resnet18():
        return _timm("resnet18")


    def mobilenetv3():
        return _timm("mobilenetv3_small_050")


    def deit():
        return _timm("deit_tiny_patch16_224", img_size=64)


    def swin():
        return _timm("swin_tiny_patch4_window7_224", img_size=112)


    def regnet():
        return _timm("regnetx_002")
    """
)

SEQ = {"axis": 1, "name": "seq", "min": 4, "opt": 16, "max": 32}


def text(*names: str) -> list[dict[str, Any]]:
    inputs: list[dict[str, Any]] = []
    for name in names:
        entry: dict[str, Any] = {"name": name, "shape": [-1, -1], "dtype": "int64"}
        inputs.append({**entry, "dynamic": [SEQ], "range": [0, 1 if "mask" in name else 99]})
    return inputs


def image(name: str, size: int) -> list[dict[str, Any]]:
    return [{"name": name, "shape": [-1, 3, size, size]}]


@dataclass(frozen=True)
class Case:
    factory: str
    inputs: list[dict[str, Any]]
    outputs: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


MASKED = text("input_ids", "attention_mask")
CASES = {
    "distilbert": Case("distilbert", MASKED, ["last_hidden_state"]),
    "roberta": Case("roberta", MASKED, ["pooler_output", "last_hidden_state"]),
    "electra": Case("electra", MASKED, ["logits"]),
    "gpt2": Case("gpt2", text("input_ids"), ["logits"]),
    "t5-encoder": Case("t5_encoder", MASKED, ["last_hidden_state"]),
    "vit": Case("vit", image("pixel_values", 32), ["logits"]),
    "wav2vec2": Case(
        "wav2vec2", [{"name": "input_values", "shape": [-1, 1600]}], ["last_hidden_state"]
    ),
    "efficientnet-b0": Case("efficientnet_b0", image("x", 64), ["logits"]),
    "resnet18": Case("resnet18", image("x", 64), ["logits"]),
    "mobilenetv3": Case("mobilenetv3", image("x", 64), ["logits"]),
    "deit": Case("deit", image("x", 64), ["logits"]),
    "swin": Case("swin", image("x", 112), ["logits"]),
    "regnet": Case("regnet", image("x", 64), ["logits"]),
}
SHORTEST = {
    "warmupIterations": 1,
    "windowIterations": 3,
    "minRounds": 2,
    "maxRounds": 3,
    "maxSeconds": 1.0,
    "threads": 1,
    "maxCpuPressurePercent": 100,
    "maxBaselineSpreadPercent": 1e9,
}


def write_calibration(folder: Path, inputs: list[dict[str, Any]], samples: int = 40) -> None:
    """Shards of random samples: two lengths where an input has a dynamic axis."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    dynamic = any(t.get("dynamic") for t in inputs)
    for i, length in enumerate((8, 20) if dynamic else (0,)):
        arrays: dict[str, Any] = {}
        for t in inputs:
            shape = [
                samples if a == 0 else (length if d == -1 else d) for a, d in enumerate(t["shape"])
            ]
            if t.get("dtype") == "int64":
                low, high = t["range"]
                arrays[t["name"]] = rng.integers(low, high + 1, shape).astype(np.int64)
            else:
                arrays[t["name"]] = rng.standard_normal(shape).astype(np.float32)
        if "attention_mask" in arrays:
            arrays["attention_mask"][:] = 1  # a mask of random zeros could mask a whole row
        np.savez(folder / f"shard-{i}.npz", **arrays)


def run_case(root: Path, name: str, case: Case) -> str:
    import torch

    folder = root / name
    folder.mkdir()
    (folder / "sweep_models.py").write_text(FACTORIES)
    namespace: dict[str, Any] = {}
    exec(compile(FACTORIES, "sweep_models.py", "exec"), namespace)
    torch.save(namespace[case.factory]().state_dict(), folder / "weights.pt")
    write_calibration(folder / "calibration", case.inputs)
    spec = {
        "source": {"uri": "weights.pt", "factory": f"sweep_models:{case.factory}"},
        "inputs": case.inputs,
        "outputs": case.outputs,
        "batchSizes": [1, 4],
        "backends": ["pytorch", "onnxruntime", "aotinductor"],
        "precisions": ["fp32", "int8"],
        "calibration": {"uri": "calibration", "samples": 32},
        "accuracy": {"samples": 8},
        "benchmark": SHORTEST,
        "artifacts": {"uri": "artifacts"},
        "selection": {"minSpeedup": 0.01},
        **case.extra,
    }
    document: dict[str, Any] = {"apiVersion": "kiln.dev/v1alpha1", "kind": "OptimizedModel"}
    document |= {"metadata": {"name": name}, "spec": spec}
    (folder / "spec.yaml").write_text(yaml.safe_dump(document))
    command = [KILN, "optimize", str(folder / "spec.yaml"), "-o", str(folder / "out"), "-q"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    status = folder / "out" / "status.json"
    if done.returncode != 0 and not status.exists():
        return f"exit {done.returncode}: " + " ".join((done.stdout + done.stderr).split())[-400:]
    return f"exit {done.returncode}: " + describe(json.loads(status.read_text()))


def describe(status: dict[str, Any]) -> str:
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    words = []
    for c in cpu["candidates"]:
        word = c["state"]
        if word == "OK":
            word += "/pass" if (c.get("accuracy") or {}).get("passed") else "/gate-fail"
        elif word == "FAILED":
            word += f" ({(c.get('reason') or '')[:200]})"
        words.append(f"{c['name']} {word}")
    return ", ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--keep", type=Path, help="keep each model's folder here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-model-sweep-") as scratch:
        root = args.keep or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            print(f"{name}: {run_case(root, name, CASES[name])}", flush=True)


if __name__ == "__main__":
    main()
