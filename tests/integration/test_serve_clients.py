"""`kiln serve` driven by NVIDIA's own clients, as production callers drive Triton and KServe:
tritonclient over HTTP (JSON and the binary tensor data extension) and over gRPC. Answers are
checked against the engine itself; bad binary bodies get a 400 that says what was wrong."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from kiln.serve.body import RAW_FROM
from tests.conftest import free_port
from tests.integration.test_serve import optimized, reference, start

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["optimized"]  # the module fixture, shared with test_serve


GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def server(optimized: Path) -> Iterator[str]:
    process, url = start(optimized, "--batch-window-ms", "5", grpc_port=GRPC_PORT)
    yield url
    process.terminate()
    process.wait(timeout=10)


def image(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http(server: str, optimized: Path, binary: bool) -> None:
    client = triton_http.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 4]}]
    data = image(3)
    tensor = triton_http.InferInput("image", [3, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(data, binary_data=binary)
    output = triton_http.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("tiny", [tensor], outputs=[output])
    got = result.as_numpy("logits")
    assert got is not None
    np.testing.assert_allclose(got, reference(optimized, data), rtol=1e-5, atol=1e-6)
    # Without named outputs the client asks for all of them, in binary by default.
    every = client.infer("tiny", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(every, got)


def binary_body(header: dict[str, object], payload: bytes) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(header).encode()
    return text + payload, {"Inference-Header-Content-Length": str(len(text))}


def post(server: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server}/v2/models/tiny/infer", content=body, headers=headers, timeout=30)


def test_mixed_json_and_binary_and_what_a_bad_binary_body_gets(server: str) -> None:
    raw = image(1).tobytes()
    tensor = {"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32"}
    good = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    }
    answer = post(server, *binary_body(good, raw))
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"] == [1, 4]  # binary in, JSON out
    cases = [
        (binary_body(good, raw + b"x"), "add up to 3072 bytes, but 3073 follow the header"),
        (binary_body(good, raw[:-4]), "runs past the 3068 bytes after the header"),
        (
            binary_body({"inputs": [{**tensor, "parameters": {"binary_data_size": 4}}]}, b"abcd"),
            "4 bytes for FP32 [1, 3, 16, 16] (3072 expected)",
        ),
        (
            (json.dumps(good).encode(), {"Inference-Header-Content-Length": "99999"}),
            "Inference-Header-Content-Length 99999 is outside the body",
        ),
        (
            binary_body({"inputs": [tensor]}, b""),
            "neither data nor parameters.binary_data_size",
        ),
    ]
    for (body, headers), expected in cases:
        response = post(server, body, headers)
        assert response.status_code == 400, (expected, response.text)
        assert expected in response.json()["error"], response.text
    assert post(server, *binary_body(good, raw)).status_code == 200  # and it serves on


def test_bodies_the_server_reads_into_one_buffer(server: str, optimized: Path) -> None:
    """Bodies from RAW_FROM bytes up (kiln.serve.body), JSON and binary with a JSON header,
    then a small one on the same connection: each answered as the engine answers."""
    data = image(8, seed=4)
    values = {"name": "image", "shape": [8, 3, 16, 16], "datatype": "FP32"}
    padding = {"name": "logits", "parameters": {"binary_data": False, "note": "x" * RAW_FROM}}
    as_json = json.dumps({"inputs": [{**values, "data": data.ravel().tolist()}]}).encode()
    header = {
        "inputs": [{**values, "parameters": {"binary_data_size": data.nbytes}}],
        "outputs": [padding],  # a large JSON header ahead of the binary tensor
    }
    expected = reference(optimized, data)
    with httpx.Client(timeout=30) as client:
        for body, headers in [
            (as_json, {"content-type": "application/json"}),
            binary_body(header, data.tobytes()),
        ]:
            assert len(body) >= RAW_FROM
            answer = client.post(f"{server}/v2/models/tiny/infer", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            got = np.asarray(answer.json()["outputs"][0]["data"], np.float32).reshape(8, 4)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        small = client.post(
            f"{server}/v2/models/tiny/infer",
            content=json.dumps(
                {"inputs": [{**values, "shape": [1, 3, 16, 16], "data": data[:1].ravel().tolist()}]}
            ),
        )
        assert small.status_code == 200, small.text


def test_tritonclient_grpc(server: str, optimized: Path) -> None:
    import tritonclient.grpc as triton_grpc
    from tritonclient.utils import InferenceServerException

    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny", as_json=True)
    assert meta["platform"] == httpx.get(f"{server}/v2/models/tiny").json()["platform"]
    assert [o["shape"] for o in meta["outputs"]] == [["-1", "4"]]  # int64 as JSON strings
    data = image(5, seed=3)
    tensor = triton_grpc.InferInput("image", [5, 3, 16, 16], "FP32")
    tensor.set_data_from_numpy(data)
    result = client.infer("tiny", [tensor])
    np.testing.assert_allclose(
        result.as_numpy("logits"), reference(optimized, data), rtol=1e-5, atol=1e-6
    )
    wrong = triton_grpc.InferInput("image", [1, 3, 8, 8], "FP32")
    wrong.set_data_from_numpy(image(1)[:, :, :8, :8].copy())
    with pytest.raises(InferenceServerException, match=r"shape \[1, 3, 8, 8\], expected"):
        client.infer("tiny", [wrong])
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        client.get_model_metadata("other")
    # REST and gRPC share one metrics registry.
    metrics = httpx.get(f"{server}/metrics").text
    assert 'kiln_requests_total{code="INVALID_ARGUMENT",protocol="grpc"}' in metrics


def grpc_count(metrics: str, code: str) -> float:
    line = f'kiln_requests_total{{code="{code}",protocol="grpc"}}'
    return sum(float(m.split()[-1]) for m in metrics.splitlines() if m.startswith(line))


def test_grpc_answers_say_what_was_wrong_and_are_all_counted(server: str) -> None:
    """An empty request is INVALID_ARGUMENT naming the field (it was UNKNOWN with pydantic's
    text), a method the service lacks is UNIMPLEMENTED, and every answer is counted by its
    status name."""
    import grpc
    import tritonclient.grpc as triton_grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    before = httpx.get(f"{server}/metrics").text
    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name="tiny"))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request: inputs" in str(info.value.details())
        assert "pydantic" not in str(info.value.details())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelConfig(service_pb2.ModelConfigRequest(name="tiny"))
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    assert client.is_model_ready("tiny")
    after = httpx.get(f"{server}/metrics").text
    assert grpc_count(after, "INVALID_ARGUMENT") - grpc_count(before, "INVALID_ARGUMENT") == 1
    assert grpc_count(after, "UNIMPLEMENTED") - grpc_count(before, "UNIMPLEMENTED") == 1
    assert grpc_count(after, "OK") - grpc_count(before, "OK") == 1


def test_statistics_account_for_every_request_over_http_and_grpc(optimized: Path) -> None:
    """Triton's statistics extension, read by tritonclient both ways: counts match what was
    sent, and the server's time per request is queue + compute + a positive overhead."""
    import tritonclient.grpc as triton_grpc

    grpc_port = free_port()
    process, url = start(optimized, grpc_port=grpc_port)  # a fresh server: counts from zero
    try:
        http = triton_http.InferenceServerClient(url.removeprefix("http://"))
        rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert "statistics" in http.get_server_metadata()["extensions"]
        for batch in (1, 2, 3):
            tensor = triton_http.InferInput("image", [batch, 3, 16, 16], "FP32")
            tensor.set_data_from_numpy(image(batch), binary_data=True)
            http.infer("tiny", [tensor])
        tensor = triton_grpc.InferInput("image", [4, 3, 16, 16], "FP32")
        tensor.set_data_from_numpy(image(4))
        rpc.infer("tiny", [tensor])
        over_http = http.get_inference_statistics("tiny")["model_stats"][0]
        over_grpc = rpc.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert over_http["inference_count"] == 1 + 2 + 3 + 4  # samples
    assert over_http["execution_count"] == 4  # one at a time: one batch each
    stages = over_http["inference_stats"]
    assert stages["success"]["count"] == 4
    assert stages["fail"]["count"] == 0
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stages[stage]["count"] == 4
    spent = sum(stages[s]["ns"] for s in ("queue", "compute_infer"))
    assert 0 < stages["compute_infer"]["ns"] < spent <= stages["success"]["ns"]
    assert sorted(b["batch_size"] for b in over_http["batch_stats"]) == [1, 2, 3, 4]
    # The same counters over gRPC (uint64 fields come back as JSON strings).
    assert int(over_grpc["inference_count"]) == 10
    assert int(over_grpc["inference_stats"]["success"]["count"]) == 4


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_kserve_sdk_rest_and_grpc(server: str, optimized: Path, binary: bool) -> None:
    """KServe's own Python SDK (its v2 clients, REST and gRPC), as a KServe user calls an
    InferenceService: health and readiness, then inference with the answers the engine gives.
    REST sends JSON or binary tensors and asks for outputs the same way. The SDK runs in a
    process of its own: its compiled protocol and tritonclient's define the same `inference.*`
    messages, which one process's protobuf registry refuses twice."""
    data = image(4, seed=6)
    command = [sys.executable, "-m", "tests.fixtures.kserve_client", server]
    command += [f"127.0.0.1:{GRPC_PORT}", json.dumps(data.tolist()), str(binary)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    expected = reference(optimized, data)
    answers = json.loads(done.stdout)
    assert set(answers) == {"rest", "grpc"}
    for how, answer in answers.items():
        assert (answer["live"], answer["ready"]) == (True, True), how
        assert (answer["model_name"], answer["id"]) == ("tiny", "k-1"), how
        assert (answer["name"], answer["shape"], answer["datatype"]) == ("logits", [4, 4], "FP32")
        np.testing.assert_allclose(
            np.asarray(answer["data"], np.float32), expected, rtol=1e-5, atol=1e-6
        )
