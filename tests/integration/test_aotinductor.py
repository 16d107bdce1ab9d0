"""AOTInductor end to end on a tiny model: a real compile (in its own process), the accuracy
gate and the side-by-side benchmark, reuse of the stored package, and `kiln serve` loading the
package on a PATH with no C++ compiler, as a server image has none."""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.runtime.aoti_runner import AotiRunner, IncompatiblePackageError, package_metadata
from kiln.storage.objects import parse_uri
from tests.conftest import TinyExample, make_tiny_example, tiny_spec
from tests.fixtures.tiny_models import build
from tests.integration.test_serve import Server, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent
AOTI = "aotinductor-cpu-fp32"


def optimize(example: TinyExample, out: Path, **spec: Any) -> dict[str, Any]:
    example.write_spec(
        tiny_spec(precisions=["fp32"], calibration=None, selection={"minSpeedup": 0.01}, **spec)
    )
    result = CliRunner().invoke(app, ["optimize", str(example.spec_path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    target: dict[str, Any] = json.loads((out / "status.json").read_text())["targets"][0]
    return target


def candidate(target: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in target["candidates"] if c["name"] == name)
    return found


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> TinyExample:
    return make_tiny_example(tmp_path_factory.mktemp("aoti"), calibration=False)


@pytest.fixture(scope="module")
def first(example: TinyExample) -> dict[str, Any]:
    return optimize(
        example, example.root / "first", backends=["pytorch", "aotinductor", "onnxruntime"]
    )


def aoti_manifests(example: TinyExample) -> list[Path]:
    return [m for m in example.manifests() if m.parent.name.startswith("aoti-")]


def test_the_package_is_built_gated_and_measured_beside_the_others(
    first: dict[str, Any], example: TinyExample
) -> None:
    aoti = candidate(first, AOTI)
    assert aoti["state"] == "OK", aoti
    assert aoti["accuracy"]["passed"] is True
    assert aoti["accuracy"]["maxAbsError"] < 1e-4
    assert aoti["artifact"].endswith("/model.pt2")
    assert aoti["cached"] is False
    assert aoti["artifactReused"] is False
    assert [b["batchSize"] for b in aoti["benchmarks"]] == [1, 4]
    for bench in aoti["benchmarks"]:
        assert (
            bench["speedupInterval"]["low"] <= bench["speedup"] <= bench["speedupInterval"]["high"]
        )
    # Built for this CPU: the manifest records the instruction sets the key covers.
    (manifest,) = aoti_manifests(example)
    meta = json.loads(manifest.read_text())["meta"]
    assert meta["stage"] == "aotinductor"
    assert meta["isa"] == package_metadata(Path(parse_uri(aoti["artifact"]).key))["AOTI_CPU_ISA"]


def test_a_second_run_reuses_the_package_and_serves_it_without_a_compiler(
    first: dict[str, Any], example: TinyExample
) -> None:
    before = aoti_manifests(example)
    # Another candidate list: the result is measured again, the package is not compiled again.
    second = optimize(example, example.root / "second", backends=["pytorch", "aotinductor"])
    aoti = candidate(second, AOTI)
    assert second["cached"] is False
    assert aoti["cached"] is False  # measured again
    assert aoti["artifactReused"] is True  # from the package the first run compiled
    assert aoti["artifact"] == candidate(first, AOTI)["artifact"]
    assert aoti_manifests(example) == before
    assert second["selected"] == AOTI

    image = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = build().eval()(torch.from_numpy(image)).numpy()
    # The server image has no compiler: neither has this PATH (only the venv's scripts).
    env = {**os.environ, "PATH": str(BIN)}
    assert shutil.which("c++", path=env["PATH"]) is None
    process, url = start(example.root / "second", env=env)
    try:
        assert httpx.get(f"{url}/v2/models/tiny").json()["platform"] == AOTI
        response = Server(url, example.root / "second", process).infer(image)
        assert response.status_code == 200, response.text
        got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(3, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    # Loading needed no compiler and said nothing alarming about the package.
    assert "outdated" not in output, output
    assert "Traceback" not in output, output


def test_a_package_for_another_cpu_or_torch_is_refused(
    first: dict[str, Any], tmp_path: Path
) -> None:
    package = Path(parse_uri(candidate(first, AOTI)["artifact"]).key)
    foreign = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("metadata.json"):
                meta = json.loads(data)
                meta["AOTI_CPU_ISA"] += " NO_SUCH_ISA"
                data = json.dumps(meta).encode()
            dst.writestr(item, data)
    with pytest.raises(IncompatiblePackageError, match="this CPU lacks no_such_isa"):
        AotiRunner(AOTI, foreign, ["image"], "cpu")
    with pytest.raises(IncompatiblePackageError, match="compiled for device type cpu"):
        AotiRunner(AOTI, package, ["image"], "cuda:0")


def test_a_compile_failure_is_a_failed_candidate_and_nothing_is_marked_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injected: a C++ compiler that always fails, and an empty Inductor cache, so the
    # compile cannot be answered from an earlier test's objects.
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    example = make_tiny_example(tmp_path, calibration=False)
    target = optimize(
        example,
        tmp_path / "out",
        backends=["pytorch", "aotinductor", "onnxruntime"],
        batchSizes=[2],
    )
    aoti = candidate(target, AOTI)
    assert aoti["state"] == "FAILED"
    assert aoti["reason"].startswith("build failed: AOTInductor compile failed: "), aoti
    assert candidate(target, "onnxruntime-cpu-fp32")["state"] == "OK"
    assert target["selected"] == "onnxruntime-cpu-fp32"
    assert aoti_manifests(example) == []
