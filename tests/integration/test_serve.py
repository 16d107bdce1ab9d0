"""`kiln serve` as a real server process, driven by a real HTTP client on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from kiln.cli.main import app
from kiln.storage.objects import parse_uri
from tests.conftest import free_port, make_tiny_example, tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILN = str(Path(sys.executable).parent / "kiln")


@dataclass
class Server:
    url: str
    out: Path
    process: subprocess.Popen[bytes]

    def infer(self, image: np.ndarray, client: httpx.Client | None = None) -> httpx.Response:
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": list(image.shape),
                    "datatype": "FP32",
                    "data": image.reshape(-1).tolist(),
                }
            ]
        }
        return (client or httpx).post(f"{self.url}/v2/models/tiny/infer", json=body, timeout=30)


def start(
    out: Path, *extra: str, env: dict[str, str] | None = None, grpc_port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """`kiln serve` on a free REST port; gRPC only where a port is given (0: none)."""
    port = free_port()
    process = subprocess.Popen(
        [
            KILN,
            "serve",
            "--from",
            str(out),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read().decode() if process.stdout else "exited")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("server did not become ready")


def served(out: Path, name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each output `kiln serve --from out` answers for `inputs` over REST JSON, by name, in
    the order it answers them."""
    process, url = start(out, "--name", name)
    datatype = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}
    body = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": datatype[a.dtype],
                "data": a.ravel().tolist(),
            }
            for n, a in inputs.items()
        ]
    }
    try:
        response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=60)
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    example = make_tiny_example(tmp_path_factory.mktemp("serve"))
    root = example.root
    example.write_spec(
        tiny_spec(
            batchSizes=[1, 8], precisions=["fp32"], calibration=None, selection={"minSpeedup": 0.01}
        )
    )
    out = root / "out"
    result = CliRunner().invoke(app, ["optimize", str(example.spec_path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    status = json.loads((out / "status.json").read_text())
    assert status["targets"][0]["selected"].startswith("onnxruntime-cpu")
    return out


@pytest.fixture(scope="module")
def server(optimized: Path) -> Iterator[Server]:
    process, url = start(optimized, "--batch-window-ms", "20")
    yield Server(url, optimized, process)
    process.terminate()
    process.wait(timeout=10)


def reference(out: Path, image: np.ndarray) -> np.ndarray:
    """The engine's own answer, unbatched, straight from ONNX Runtime."""
    status = json.loads((out / "status.json").read_text())
    target = status["targets"][0]
    chosen = next(c for c in target["candidates"] if c["name"] == target["selected"])
    session = ort.InferenceSession(
        parse_uri(chosen["artifact"]).key, providers=["CPUExecutionProvider"]
    )
    result: np.ndarray = session.run(None, {"image": image})[0]
    return result


def test_protocol_endpoints(server: Server) -> None:
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
    meta = httpx.get(f"{server.url}/v2/models/tiny").json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    # Output shapes as the engine answers: the batch axis is -1, the rest is real.
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["platform"].startswith("onnxruntime-cpu")
    assert httpx.get(f"{server.url}/v2/models/other").status_code == 404


def test_infer_matches_the_engine(server: Server) -> None:
    image = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    response = server.infer(image)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "logits"
    assert output["shape"] == [2, 4]
    got = np.asarray(output["data"], np.float32).reshape(2, 4)
    np.testing.assert_allclose(got, reference(server.out, image), rtol=1e-5, atol=1e-6)


def test_concurrent_clients_all_get_their_own_answers(server: Server) -> None:
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(48)]
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda im: server.infer(im, client), images))
    assert [r.status_code for r in responses] == [200] * len(images)  # nothing dropped
    for image, response in zip(images, responses, strict=True):
        got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(1, 4)
        np.testing.assert_allclose(got, reference(server.out, image), rtol=1e-5, atol=1e-6)
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("kiln_batch_size_count")
    )
    samples = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("kiln_batch_size_sum")
    )
    assert samples >= 48
    assert batches < samples  # some requests shared a batch


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "malformed request"),
        (b'{"inputs": []}', 400, "malformed request: inputs"),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "img",
                            "shape": [1, 3, 16, 16],
                            "datatype": "FP32",
                            "data": [0.0] * 768,
                        }
                    ]
                }
            ).encode(),
            400,
            "unknown input(s) ['img']",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [1, 3, 8, 8],
                            "datatype": "FP32",
                            "data": [0.0] * 192,
                        }
                    ]
                }
            ).encode(),
            400,
            "expected ['N', 3, 16, 16]",
        ),
        (
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "image",
                            "shape": [9, 3, 16, 16],
                            "datatype": "FP32",
                            "data": [0.0] * 6912,
                        }
                    ]
                }
            ).encode(),
            400,
            "largest batch size",
        ),
    ],
)
def test_bad_requests_get_4xx_and_the_server_stays_up(
    server: Server, body: bytes, status: int, message: str
) -> None:
    response = httpx.post(
        f"{server.url}/v2/models/tiny/infer",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    assert message in response.json()["error"]
    assert server.infer(np.zeros((1, 3, 16, 16), np.float32)).status_code == 200


def test_oversized_body_is_refused(optimized: Path) -> None:
    process, url = start(optimized, "--max-body-mb", "0.001")
    try:
        big = np.zeros((4, 3, 16, 16), np.float32)
        body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [4, 3, 16, 16],
                    "datatype": "FP32",
                    "data": big.reshape(-1).tolist(),
                }
            ]
        }
        response = httpx.post(f"{url}/v2/models/tiny/infer", json=body)
        assert response.status_code == 413
        assert "exceeds" in response.json()["error"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _refused(optimized: Path, tmp_path: Path, edit: Any, *extra: str) -> str:
    copy = tmp_path / "out"
    shutil.copytree(optimized, copy)
    status = json.loads((copy / "status.json").read_text())
    edit(status["targets"][0])
    (copy / "status.json").write_text(json.dumps(status))
    proc = subprocess.run(
        [KILN, "serve", "--from", str(copy), "--port", str(free_port()), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    return proc.stderr


def test_refuses_a_failed_gate_and_a_foreign_gpu_type(optimized: Path, tmp_path: Path) -> None:
    def fail_gate(target: dict[str, Any]) -> None:
        chosen = next(c for c in target["candidates"] if c["name"] == target["selected"])
        chosen["accuracy"]["passed"] = False

    assert "refusing to serve: its recorded accuracy gate did not pass" in _refused(
        optimized, tmp_path / "a", fail_gate
    )

    def foreign(target: dict[str, Any]) -> None:
        target["name"], target["device"] = "NVIDIA-H100-80GB-HBM3", "cuda"

    stderr = _refused(optimized, tmp_path / "b", foreign, "--target", "NVIDIA-H100-80GB-HBM3")
    assert "built for GPU type NVIDIA-H100-80GB-HBM3, but this machine has no GPU" in stderr

    def unselected(target: dict[str, Any]) -> None:
        target.pop("selected")
        target["selectionReason"] = "no candidate reached minSpeedup 2x"

    assert "has no selected candidate: no candidate reached minSpeedup 2x" in _refused(
        optimized, tmp_path / "c", unselected
    )


def test_tampered_artifact_is_refused(optimized: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(optimized, copy)
    status = json.loads((copy / "status.json").read_text())
    target = status["targets"][0]
    chosen = next(c for c in target["candidates"] if c["name"] == target["selected"])
    artifact = Path(parse_uri(chosen["artifact"]).key)
    tampered = tmp_path / "store" / artifact.parent.name
    shutil.copytree(artifact.parent, tampered)
    (tampered / artifact.name).write_bytes(b"not the model")
    chosen["artifact"] = f"file://{tampered / artifact.name}"
    (copy / "status.json").write_text(json.dumps(status))
    proc = subprocess.run(
        [KILN, "serve", "--from", str(copy), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "does not match its manifest digest" in proc.stderr


def test_serves_a_stored_result_by_uri_and_key(optimized: Path) -> None:
    """How the operator starts a server pod: the result's URI and the key it decided on."""
    target = json.loads((optimized / "status.json").read_text())["targets"][0]
    port = free_port()
    args = [KILN, "serve", "--result", target["result"], "--port", str(port)]
    wrong = subprocess.run(
        [*args, "--cache-key", "result-000000000000000000000000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 2
    assert "is not the expected --cache-key 'result-000000000000000000000000'" in wrong.stderr
    process = subprocess.Popen(
        [*args, "--cache-key", target["cacheKey"]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                meta = httpx.get(f"{url}/v2/models/tiny", timeout=1).json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                assert process.poll() is None
                time.sleep(0.2)
        assert meta["versions"] == [target["cacheKey"]]
    finally:
        process.terminate()
        process.wait(timeout=10)


def count(metrics: str, code: str) -> float:
    line = f'kiln_requests_total{{code="{code}",protocol="rest"}}'
    return sum(float(m.split()[-1]) for m in metrics.splitlines() if m.startswith(line))


def test_every_refusal_has_the_protocol_error_form_and_is_counted(server: Server) -> None:
    """The framework's own answers too: an unknown route, a wrong method, an unknown model;
    each is `{"error": ...}` (what tritonclient and perf_analyzer read) and each is counted
    by code, as are the 200s."""
    before = httpx.get(f"{server.url}/metrics").text
    answers = [
        httpx.get(f"{server.url}/v2/models/tiny/no-such-endpoint"),
        httpx.get(f"{server.url}/v2/models/tiny/infer"),  # infer is POST only
        httpx.get(f"{server.url}/v2/models/other"),
        httpx.post(f"{server.url}/v2/models/other/infer", json={"inputs": []}),
    ]
    assert [a.status_code for a in answers] == [404, 405, 404, 404]
    for answer in answers:
        assert set(answer.json()) == {"error"}, answer.text
        assert answer.json()["error"], answer.text
    assert "unknown model 'other'" in answers[2].json()["error"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    after = httpx.get(f"{server.url}/metrics").text
    assert count(after, "404") - count(before, "404") == 3
    assert count(after, "405") - count(before, "405") == 1
    assert count(after, "200") - count(before, "200") >= 1  # the readiness probe
