"""`kiln serve` under load and at shutdown, as a real process on loopback.

- 64 concurrent clients send N requests (2,000 here; `KILN_LOAD_REQUESTS=10000` for the
  issue's full size), each with an input of its own, checked against ONNX Runtime's answer for
  that very input, so a batching mix-up is caught; bad requests (invalid JSON, wrong shapes,
  unknown inputs, oversized bodies) and slow clients are interleaved with the good traffic.
- SIGTERM: readiness goes false at once, requests keep being served through the drain, a
  request in flight when the server stops accepting still gets its answer, then new
  connections are refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from kiln.serve.body import RAW_FROM
from kiln.storage.objects import parse_uri
from tests.conftest import free_port
from tests.faults.figures import report
from tests.integration.test_serve import optimized, start

__all__ = ["optimized"]  # the module fixture, shared with test_serve
pytestmark = [pytest.mark.integration, pytest.mark.slow]
REQUESTS = int(os.environ.get("KILN_LOAD_REQUESTS", "2000"))
CLIENTS = 64
SHAPE = (3, 16, 16)


def body_of(image: np.ndarray, padding: int = 0) -> bytes:
    """The request's JSON, with `padding` bytes of trailing whitespace (still valid JSON)."""
    tensor = {"name": "image", "shape": list(image.shape), "datatype": "FP32"}
    body = json.dumps({"inputs": [{**tensor, "data": image.reshape(-1).tolist()}]}).encode()
    return body + b" " * padding


def padding_of(index: int) -> int:
    """Every fourth request is padded past RAW_FROM, so that it is read into one buffer
    (kiln.serve.body) while the others take uvicorn's own path."""
    return RAW_FROM if index % 4 == 1 else 0


def image_of(index: int) -> np.ndarray:
    """Request `index`'s input: its own values, batch 1 or 2 (so batches mix shapes)."""
    rng = np.random.default_rng(index)
    return rng.standard_normal((1 + index % 2, *SHAPE)).astype(np.float32)


BAD = [  # (body, expected status), interleaved with the good requests
    (b"{not json", 400),
    (json.dumps({"inputs": []}).encode(), 400),
    (body_of(np.zeros((1, 3, 8, 8), np.float32)), 400),  # wrong shape
    (body_of(np.zeros((9, *SHAPE), np.float32)), 400),  # past the largest batch size
    (body_of(np.zeros((8, *SHAPE), np.float32), 300_000), 413),  # over --max-body-mb
]


def answers(out: Path, indexes: range) -> dict[int, np.ndarray]:
    """The engine's own answer for each request's input, straight from ONNX Runtime."""
    import onnxruntime as ort

    status = json.loads((out / "status.json").read_text())
    target = status["targets"][0]
    chosen = next(c for c in target["candidates"] if c["name"] == target["selected"])
    session = ort.InferenceSession(
        parse_uri(chosen["artifact"]).key, providers=["CPUExecutionProvider"]
    )
    return {i: session.run(None, {"image": image_of(i)})[0] for i in indexes}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory in MiB: all of it (VmRSS), or one part (RssAnon, RssFile)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def slow_request(port: int, body: bytes, pause: float) -> tuple[int, bytes]:
    """One request whose body arrives in two halves, `pause` seconds apart (a slow client)."""
    head = (
        f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(head + body[: len(body) // 2])
        time.sleep(pause)
        conn.sendall(body[len(body) // 2 :])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_64_clients_each_get_their_own_answer_among_bad_and_slow_ones(optimized: Path) -> None:
    expected = answers(optimized, range(REQUESTS))
    process, url = start(optimized, "--batch-window-ms", "2", "--max-body-mb", "0.25")
    port = int(url.rsplit(":", 1)[1])
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    memory: dict[str, float] = {}
    lock = threading.Lock()

    def client(worker: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(worker, REQUESTS, CLIENTS):
                if i == REQUESTS // 4:
                    memory["quarter"] = rss_mib(process.pid)
                if i % 10 == 3:  # a bad request among every ten
                    bad, code = BAD[(i // 10) % len(BAD)]
                    got = http.post("/v2/models/tiny/infer", content=bad).status_code
                    with lock:
                        outcomes["bad answered right" if got == code else f"bad got {got}"] += 1
                started = time.perf_counter()
                body = body_of(image_of(i), padding_of(i))
                response = http.post("/v2/models/tiny/infer", content=body)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    outcomes[verdict(response, expected[i])] += 1

    try:
        with ThreadPoolExecutor(CLIENTS + 2) as pool:
            slow = [
                pool.submit(slow_request, port, body_of(image_of(i), padding_of(i)), 2.0)
                for i in (0, 1)
            ]
            list(pool.map(client, range(CLIENTS)))
            for i, future in enumerate(slow):
                status, payload = future.result()
                outcomes[verdict_raw(status, payload, expected[i], "slow")] += 1
        memory["end"] = rss_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    p50, p99 = statistics.median(latencies), np.percentile(latencies, 99)
    print(
        f"\n{REQUESTS} requests from {CLIENTS} clients: {dict(outcomes)}; p50 {p50 * 1000:.1f} ms,"
        f" p99 {p99 * 1000:.1f} ms; server RSS {memory['quarter']:.0f} -> {memory['end']:.0f} MiB"
    )
    wrong = sum(n for k, n in outcomes.items() if k.endswith("wrong answer"))
    bad = sum(1 for i in range(REQUESTS) if i % 10 == 3)
    report(
        f"kiln serve, {CLIENTS} clients, batching on",
        faults=f"{bad} bad bodies (4xx expected), 2 slow clients",
        requests=REQUESTS + 2,
        errors=sum(n for k, n in outcomes.items() if "error" in k or k.startswith("bad got")),
        wrong=wrong,
        latency=f"{p50 * 1000:.1f} / {p99 * 1000:.1f} ms",
    )
    assert outcomes["right"] == REQUESTS  # 0 errors, 0 wrong answers
    assert outcomes["slow right"] == 2
    assert outcomes["bad answered right"] == sum(1 for i in range(REQUESTS) if i % 10 == 3)
    assert set(outcomes) == {"right", "slow right", "bad answered right"}
    assert memory["end"] - memory["quarter"] < 64  # steady: no growth with the request count


def verdict(response: httpx.Response, expected: np.ndarray) -> str:
    return verdict_raw(response.status_code, response.content, expected, "")


def verdict_raw(status: int, payload: bytes, expected: np.ndarray, kind: str) -> str:
    prefix = f"{kind} " if kind else ""
    if status != 200:
        return f"{prefix}error {status}"
    data = json.loads(payload)["outputs"][0]["data"]
    got = np.asarray(data, np.float32).reshape(expected.shape)
    close = np.allclose(got, expected, rtol=1e-4, atol=1e-5)
    return f"{prefix}right" if close else f"{prefix}wrong answer"


def test_sigterm_turns_readiness_false_drains_then_finishes_in_flight_requests(
    optimized: Path,
) -> None:
    drain = 3.0
    import tritonclient.grpc as triton_grpc

    image, expected = image_of(7), answers(optimized, range(7, 8))[7]
    grpc_port = free_port()
    process, url = start(optimized, "--drain-seconds", str(drain), grpc_port=grpc_port)
    port = int(url.rsplit(":", 1)[1])
    rpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    assert rpc.is_server_ready()
    with ThreadPoolExecutor(1) as pool:
        # In flight across the stop: half its body before the drain ends, the rest after the
        # server stopped accepting.
        # Padded past RAW_FROM: the half body waits in the buffer it is read into.
        in_flight = pool.submit(slow_request, port, body_of(image, RAW_FROM), drain + 2.0)
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(f"{url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503  # readiness first: the Service drops the pod
        assert not rpc.is_server_ready()  # on gRPC too
        served = []
        while time.monotonic() - signalled < drain - 0.5:  # still served while draining
            served.append(httpx.post(f"{url}/v2/models/tiny/infer", content=body_of(image)))
        assert served
        assert {r.status_code for r in served} == {200}
        refused = wait_refused(port, drain + 10)
        print(f"\nnew connections refused {refused - signalled:.1f}s after SIGTERM")
        assert refused - signalled >= drain - 0.5
        status, payload = in_flight.result(timeout=60)
    assert verdict_raw(status, payload, expected, "") == "right"
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def wait_refused(port: int, timeout: float) -> float:
    """When a new connection was first refused."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError("the server still accepts connections")
