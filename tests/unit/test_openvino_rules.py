"""The pure rules of OpenVINO candidates: how an IR is compiled, what its measurement is keyed
by, and which files a server fetches with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.runtime.cpu_isa import openvino_isa
from kiln.runtime.ov_runner import InferencePrecision, compile_config, weights_of
from kiln.serve.loading import companions


@pytest.mark.parametrize("precision", list(InferencePrecision))
def test_the_precision_is_always_stated(precision: InferencePrecision) -> None:
    # Left out, OpenVINO computes in bf16 on a CPU with AVX512-BF16 or AMX.
    config = compile_config(2, precision)
    assert config["INFERENCE_PRECISION_HINT"] == precision.value
    assert config["INFERENCE_NUM_THREADS"] == 2
    assert (config["PERFORMANCE_HINT"], config["NUM_STREAMS"]) == ("LATENCY", 1)
    assert config["ENABLE_CPU_PINNING"] is False
    assert "CACHE_DIR" not in config
    assert compile_config(None, precision, Path("c"))["CACHE_DIR"] == "c"
    assert "INFERENCE_NUM_THREADS" not in compile_config(None, precision)


def test_the_measurement_names_the_vector_units_it_ran_on() -> None:
    zen5 = frozenset({"fpu", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "sse4_2"})
    assert openvino_isa(zen5) == "avx2 avx512_bf16 avx512_vnni avx512f"
    assert openvino_isa(frozenset({"fpu", "sse4_2"})) == "none"


def test_an_ir_is_fetched_with_its_weights() -> None:
    assert companions("model.xml") == ["model.bin"]
    assert weights_of(Path("store/key/model.xml")) == Path("store/key/model.bin")
    assert companions("model.onnx") == []
    assert companions("model.pt2") == []
