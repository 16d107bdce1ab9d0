"""A second model for a longer lease: the test suite's tiny CNN as a torch.export program with
a dynamic batch, and its spec for this GPU only (FP32 and FP16).

    python3 tests/gpu/tiny_model.py FOLDER BACKEND,BACKEND,..."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fixtures.tiny_models import build  # after the path: run as a script


def main(folder: Path, backends: list[str]) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        build().eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(folder / "tiny.pt2"))
    spec = {
        "source": {"uri": "tiny.pt2"},
        "inputs": [{"name": "image", "shape": [-1, 3, 16, 16]}],
        "outputs": ["logits"],
        "batchSizes": [1, 8],
        "backends": backends,
        "precisions": ["fp32", "fp16"],
        "targets": {"cpu": False},
        "selection": {"minSpeedup": 0.01},
    }
    document = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "tiny"},
        "spec": spec,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2].split(",")))
