"""The images, built and run for real (buildah or docker; no engine is simulated).

The operator image is small and quick to build (about 30 s on a warm base), so it is built
here whenever a container tool is present or installable (`make test` installs buildah as root
on Debian). The builder images take minutes and gigabytes: `make images` builds them, and the
builder test runs when one is in the local store, else it says SKIPPED and why.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.images import build
from tests.images.engine import Engine
from tests.images.run import Container, run, started

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).parents[2]
ML_MODULES = ("torch", "onnx", "onnxruntime", "numpy", "tensorrt")


def output_of(engine: Engine, spec: Container, tmp_path: Path) -> tuple[int, str]:
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        code = run(engine, spec, stdout=out, timeout=600)
    return code, log.read_text(errors="replace")


def test_the_operator_image_is_small_runs_as_non_root_and_holds_no_ml_library(
    engine: Engine, operator_image: build.Built, tmp_path: Path
) -> None:
    assert operator_image.size_bytes < build.OPERATOR_BUDGET_BYTES, operator_image.line()
    image = operator_image.image
    code, out = output_of(engine, Container(image, command=["id", "-u"]), tmp_path)
    assert code == 0, out
    assert out.strip() not in ("", "0"), out
    code, out = output_of(engine, Container(image, args=["--help"]), tmp_path)
    assert code == 0, out
    assert "operator" in out, out
    probe = "import importlib.util as u, json; print(json.dumps([m for m in %r if u.find_spec(m)]))"
    command = ["python3", "-c", probe % (ML_MODULES,)]
    code, out = output_of(engine, Container(image, command=command), tmp_path)
    assert code == 0, out
    assert json.loads(out.strip().splitlines()[-1]) == [], out


def test_the_operator_image_starts_the_operator_and_stops_only_for_want_of_a_cluster(
    engine: Engine, operator_image: build.Built, tmp_path: Path
) -> None:
    # The image's own entrypoint and CMD: `kiln operator`, as the Deployment runs it.
    code, out = output_of(engine, Container(operator_image.image), tmp_path)
    assert code == 2, out  # bad setup, permanent: not a crash
    assert "no cluster credentials" in out, out
    assert "Traceback" not in out, out


# ---- the builder images, where `make images` built them ---------------------------------------


@pytest.fixture(scope="module", params=["builder", "builder-gpu"])
def builder_image(engine: Engine, request: pytest.FixtureRequest) -> str:
    # The GPU image builds and serves CPU targets too (onnxruntime-gpu has the CPU provider).
    image = build.image_name(request.param)
    if not engine.can_run or not engine.exists(image):
        pytest.skip(f"{image} is not built here: `make images` builds it (several GB)")
    return image


@pytest.mark.slow
def test_the_builder_image_optimizes_the_example_and_serves_it(
    engine: Engine, builder_image: str, tmp_path: Path
) -> None:
    example = REPO / "examples" / "lipsync"
    subprocess.run([sys.executable, str(example / "make_example.py")], check=True, cwd=REPO)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user writes here
    mounts = {"/example": example, "/out": out}
    spec = Container(
        builder_image,
        # The artifacts go under /out too, where the serving container finds them.
        args=[
            "optimize",
            "/example/optimizedmodel.yaml",
            "--output",
            "/out/lipsync",
            "--artifacts",
            "/out/artifacts",
        ],
        mounts=mounts,
    )
    code, log = output_of(engine, spec, tmp_path)
    assert code == 0, log[-3000:]
    status = json.loads((out / "lipsync" / "status.json").read_text())
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    assert cpu.get("selected"), cpu
    with served(engine, builder_image, out, tmp_path) as url:
        check_infer(url, example)


@contextlib.contextmanager
def served(engine: Engine, image: str, folder: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    spec = Container(
        image,
        args=["serve", "--from", "/out/lipsync", "--port", str(port)],
        mounts={"/out": folder},
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as sink, started(engine, spec, stdout=sink) as process:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            pytest.fail(f"kiln serve in {image} never became ready:\n{log.read_text()[-3000:]}")
        yield url


def check_infer(url: str, example: Path) -> None:
    """One real infer over HTTP, checked against PyTorch eager on this machine."""
    import torch

    rng = np.random.default_rng(7)
    image = rng.standard_normal((1, 6, 320, 320), dtype=np.float32)
    audio = rng.standard_normal((1, 512, 1, 8), dtype=np.float32)
    body = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.ravel().tolist()}
            for n, a in (("image", image), ("audio", audio))
        ]
    }
    answer = httpx.post(f"{url}/v2/models/lipsync/infer", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    output = answer.json()["outputs"][0]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    program = torch.export.load(str(example / "data" / "lipsync.pt2"))
    with torch.no_grad():
        expected = program.module()(torch.from_numpy(image), torch.from_numpy(audio)).numpy()
    error = np.linalg.norm(got - expected) / max(float(np.linalg.norm(expected)), 1e-12)
    assert error <= 0.05, error  # the selected engine may be INT8: its gate allows this much
