"""TensorRT engine runner (TensorRT >= 10 name-based I/O), device memory held by torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kiln.runtime.base import Array, Feeds


def _torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.INT8: torch.int8,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.UINT8: torch.uint8,
    }
    return table[trt_dtype]


class TrtRunner:
    def __init__(self, name: str, engine_path: Path, output_names: list[str], device: str) -> None:
        import tensorrt as trt

        self.name = name
        self.device = device
        self.output_names = output_names
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{engine_path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self._inputs: dict[str, torch.Tensor] = {}
        self._outputs: dict[str, torch.Tensor] = {}
        self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]

    def prepare(self, feeds: Feeds) -> None:
        import tensorrt as trt

        self._inputs, self._outputs = {}, {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                continue
            want = _torch_dtype(self.engine.get_tensor_dtype(name))
            tensor = torch.from_numpy(np.asarray(feeds[name], order="C")).to(self.device, want)
            self._inputs[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = _torch_dtype(self.engine.get_tensor_dtype(name))
            out = torch.empty(shape, dtype=dtype, device=self.device)
            self._outputs[name] = out
            self.context.set_tensor_address(name, out.data_ptr())

    def run(self) -> None:
        if not self.context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"{self.name}: TensorRT execution failed")
        self._stream.synchronize()

    def outputs(self) -> list[Array]:
        return [self._outputs[n].float().cpu().numpy() for n in self.output_names]

    def close(self) -> None:
        self._inputs, self._outputs = {}, {}
