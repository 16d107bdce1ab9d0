"""OpenVINO runner for CPU targets: an IR (`model.xml` + `model.bin`) compiled for this CPU.

How it is compiled, and why (the same for the benchmark and `kiln serve`, so the figures are
the served engine's):
- `INFERENCE_PRECISION_HINT` is always set: on a CPU with AVX512-BF16 or AMX, OpenVINO's
  default is bf16, which would make an "FP32" candidate a bf16 one with bf16's error.
- `PERFORMANCE_HINT=LATENCY` with one stream: the benchmark and the server run one batch at a
  time on one thread (the server batches requests itself), so throughput streams would split
  the threads between parallel requests that never come, and OpenVINO's own batching stays off.
- `INFERENCE_NUM_THREADS` is the target's thread count (the pod's quota), like every runtime's.
- `ENABLE_CPU_PINNING=False`: on a shared node a pinned thread waits for its one core while
  others are idle; unpinned, the scheduler moves it (TBB's workers steal work, and degrade
  more gracefully beside a CPU hog than spinning OpenMP pools).
- `CACHE_DIR` (the server's): a compiled model is cached per CPU and OpenVINO version, so a
  restarted server skips the compile.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from kiln.runtime.base import Array, Feeds


class InferencePrecision(StrEnum):
    """OpenVINO's `INFERENCE_PRECISION_HINT` values Kiln uses."""

    F32 = "f32"
    BF16 = "bf16"

    @staticmethod
    def of(precision: str) -> InferencePrecision:
        """The hint a candidate of `precision` (`fp32`, `bf16`, `int8`) is compiled with: bf16
        for bf16, else f32 (INT8 included: what NNCF left unquantized stays float32)."""
        return InferencePrecision.BF16 if precision == "bf16" else InferencePrecision.F32


def compile_config(
    threads: int | None, precision: InferencePrecision, cache_dir: Path | None = None
) -> dict[str, Any]:
    """The CPU plugin's properties for one compiled model (see the module's docstring)."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": precision.value,
        "ENABLE_CPU_PINNING": False,
    }
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def weights_of(xml: Path) -> Path:
    """An IR's weights file: `model.bin` beside `model.xml`."""
    return xml.with_suffix(".bin")


class OpenVinoRunner:
    def __init__(
        self,
        name: str,
        xml: Path,
        output_names: list[str],
        threads: int | None = None,
        precision: InferencePrecision = InferencePrecision.F32,
        cache_dir: Path | None = None,
    ) -> None:
        import openvino as ov

        self.name = name
        self.device = "cpu"
        self.output_names = output_names
        core = ov.Core()
        model = core.read_model(str(xml), str(weights_of(xml)))
        self.compiled = core.compile_model(
            model, "CPU", compile_config(threads, precision, cache_dir)
        )
        self.request = self.compiled.create_infer_request()
        self._tensor = ov.Tensor
        self._feeds: Feeds = {}

    def prepare(self, feeds: Feeds) -> None:
        # The request reads the arrays in place: keep them alive (and contiguous) until the
        # next prepare.
        self._feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        for name, value in self._feeds.items():
            self.request.set_tensor(name, self._tensor(value, shared_memory=True))

    def run(self) -> None:
        self.request.infer()

    def outputs(self) -> list[Array]:
        # Copies: the request reuses its output buffers on the next run.
        return [np.array(self.request.get_tensor(n).data, copy=True) for n in self.output_names]

    def property(self, key: str) -> str:
        """What the compiled model really uses (e.g. `INFERENCE_PRECISION_HINT`: `bf16`)."""
        value = self.compiled.get_property(key)
        # Element types print as `<Type: 'bfloat16'>`; their own name is the property's value.
        return str(value.get_type_name() if hasattr(value, "get_type_name") else value)

    def close(self) -> None:
        self._feeds = {}
