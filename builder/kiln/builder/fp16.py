"""Stage (GPU targets only): an FP16 ONNX model with FP32 inputs and outputs.

TensorRT 11 builds only strongly typed networks, so reduced precision must be in the model
itself; ONNX Runtime's CUDA FP16 candidate uses the same file.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16


def convert_fp16(model: Path, out: Path) -> None:
    converted = convert_float_to_float16(onnx.load(str(model)), keep_io_types=True)
    onnx.save(converted, str(out))
