"""ONNX Runtime runner: CPU, or CUDA with I/O bound on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from kiln.runtime.base import Array, Feeds


def session_options(threads: int | None) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        # Nodes run one after another (ORT_SEQUENTIAL, the default): the inter-op pool is
        # unused, so it gets no threads of its own to spin.
        options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: alone it costs nothing measurable
    # (lipsync, 2 threads: 57.3 against 55.0 samples/s at batch 1, 57.3 against 58.4 at 8),
    # beside two CPU hogs it keeps 1.5x the throughput (37.7 against 24.7; 38.5 against
    # 26.1), because a spinning thread burns the time slice its sibling needs
    # (benchmarks/shared_node.py --rounds 10, AMD EPYC, 2 vCPUs).
    options.add_session_config_entry(SPINNING, "0")
    return options


SPINNING = "session.intra_op.allow_spinning"


def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu loads CUDA and cuDNN at session creation; where they come as NVIDIA's
    PyPI wheels (PyTorch's own), it finds them only once preloaded (ORT >= 1.21)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


class OrtRunner:
    def __init__(
        self,
        name: str,
        model_path: Path,
        output_names: list[str],
        device: str,
        threads: int | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.output_names = output_names
        providers: list[Any]
        if device.startswith("cuda"):
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index})]
            _preload_cuda_libraries()
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            str(model_path), sess_options=session_options(threads), providers=providers
        )
        if (
            device.startswith("cuda")
            and "CUDAExecutionProvider" not in self.session.get_providers()
        ):
            raise RuntimeError("CUDAExecutionProvider did not load (is onnxruntime-gpu installed?)")
        self._feeds: Feeds = {}
        self._binding: Any = None
        self._out: list[Array] = []

    def prepare(self, feeds: Feeds) -> None:
        self._feeds = {k: np.asarray(v, order="C") for k, v in feeds.items()}
        if self.device.startswith("cuda"):
            # Inputs live on the GPU before timing starts, as the PyTorch baseline's do.
            binding = self.session.io_binding()
            for name, value in self._feeds.items():
                binding.bind_ortvalue_input(
                    name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
                )
            for name in self.output_names:
                binding.bind_output(name, "cuda")
            self._binding = binding

    def run(self) -> None:
        if self._binding is not None:
            self.session.run_with_iobinding(self._binding)
            self._binding.synchronize_outputs()
        else:
            self._out = self.session.run(self.output_names, self._feeds)

    def outputs(self) -> list[Array]:
        if self._binding is not None:
            return [np.asarray(v, dtype=np.float32) for v in self._binding.copy_outputs_to_cpu()]
        return [np.asarray(v) for v in self._out]

    def close(self) -> None:
        self._binding = None
        self._feeds = {}
