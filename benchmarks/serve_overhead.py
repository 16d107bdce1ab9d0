"""Server overhead of `kiln serve`: end-to-end latency and throughput over the engine's own, for
JSON REST, binary REST (the binary tensor data extension) and gRPC, each at batch 1 one request
at a time and under 8 and 32 concurrent clients with dynamic batching on, in one run.

    .venv/bin/python benchmarks/serve_overhead.py [OUTPUT_DIR] [--requests 40] [--window-ms 5]

OUTPUT_DIR is a `kiln optimize --output` folder (default: out/lipsync from `make demo`). The
clients run on the same machine as the server (and share its cores): on a 2-core machine their
latencies bound what the server adds from above, they do not isolate it. So each row also gives
the server's own account (Triton's statistics extension, read before and after the row): its
mean time per request from a whole request body to a ready response, and of that its overhead,
what is left after queueing and compute (perf_analyzer's "Server: Overhead"). With Go on PATH,
binary REST is also driven by benchmarks/serve_client, a native client (standard library only)
whose own cost is small, so its end-to-end figures are mostly the server's and the engine's;
the same client against the same program serving the transport floor (a Go HTTP server that
reads each body and answers with as many bytes as kiln serve does, with no other work) gives the
least any server could add on this machine: moving the bytes over loopback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from kiln.api.spec import Benchmark
from kiln.builder.benchmark import measure_alone
from kiln.serve.loading import check_servable, from_output_dir, open_runner, pick_target
from kiln.serve.stats import breakdown
from kiln.storage.objects import parse_uri

ROOT = Path(__file__).resolve().parents[1]
Call = Callable[[], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def json_body(feeds: dict[str, np.ndarray]) -> bytes:
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.reshape(-1).tolist()}
        for n, a in feeds.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def binary_body(feeds: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, dict[str, str]]:
    inputs = [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": "FP32",
            "parameters": {"binary_data_size": a.nbytes},
        }
        for n, a in feeds.items()
    ]
    wanted = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    header = json.dumps({"inputs": inputs, "outputs": wanted}).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + b"".join(a.tobytes() for a in feeds.values()), headers


def rest_call(url: str, body: bytes, headers: dict[str, str]) -> Callable[[], Call]:
    """A factory of per-thread callables (one HTTP connection each)."""

    def make() -> Call:
        client = httpx.Client(timeout=120)

        def call() -> None:
            client.post(url, content=body, headers=headers).raise_for_status()

        return call

    return make


def grpc_call(address: str, model: str, feeds: dict[str, np.ndarray]) -> Callable[[], Call]:
    import tritonclient.grpc as triton

    def make() -> Call:
        client = triton.InferenceServerClient(address)
        tensors = []
        for name, array in feeds.items():
            tensor = triton.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return lambda: client.infer(model, tensors) and None

    return make


def sequential(make: Callable[[], Call], count: int) -> list[float]:
    call = make()
    for _ in range(3):
        call()  # warm the connection and the server's path
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


def concurrent(make: Callable[[], Call], clients: int, count: int) -> tuple[list[float], float]:
    local = threading.local()

    def one(_: int) -> float:
        if not hasattr(local, "call"):
            local.call = make()
            local.call()
        started = time.perf_counter()
        local.call()
        return time.perf_counter() - started

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # every client connected and warm
        started = time.perf_counter()
        times = list(pool.map(one, range(count)))
        wall = time.perf_counter() - started
    return times, count / wall


def server_stats(base: str, model: str) -> dict[str, dict[str, int]]:
    stats: dict[str, dict[str, int]] = httpx.get(f"{base}/v2/models/{model}/stats").json()[
        "model_stats"
    ][0]["inference_stats"]
    return stats


def native_client(workdir: Path) -> Path | None:
    """benchmarks/serve_client (Go, standard library only) built into `workdir`: a client whose
    own cost is small, so the end-to-end figure is mostly the server's; None without Go."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = workdir / "serve_client"
    subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=ROOT / "benchmarks" / "serve_client", check=True
    )
    return binary


def native_run(
    binary: Path, url: str, body: Path, header_length: int, requests: int, clients: int
) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, requests/s) of the Go client's binary REST requests."""
    command = [str(binary), "-url", url, "-body", str(body), "-header-length", str(header_length)]
    command += ["-requests", str(requests), "-clients", str(clients)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    out = json.loads(done.stdout)
    if out["errors"]:
        raise SystemExit(f"the Go client got {out['errors']} errors")
    return out["p50_ms"], out["p99_ms"], out["per_s"]


def p50_p99(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return 1000 * statistics.median(ordered), 1000 * ordered[
        min(len(ordered) - 1, int(len(ordered) * 0.99))
    ]


def start_server(
    output: Path, port: int, grpc_port: int, window_ms: float, threads: int | None
) -> subprocess.Popen[bytes]:
    kiln = str(Path(sys.executable).parent / "kiln")
    extra = ["--threads", str(threads)] if threads else []
    server = subprocess.Popen(
        [
            kiln,
            "serve",
            "--from",
            str(output),
            "--port",
            str(port),
            "--grpc-port",
            str(grpc_port),
            "--batch-window-ms",
            str(window_ms),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ready = f"http://127.0.0.1:{port}/v2/health/ready"
    wait_ready(lambda: httpx.get(ready, timeout=1), server, 120, "server")
    return server


def wait_ready(
    ask: Callable[[], httpx.Response], process: subprocess.Popen[bytes], seconds: float, what: str
) -> None:
    """Until `ask` gets a success: exits if `process` ends or `seconds` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            ask().raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit(f"{what} did not start") from None
            time.sleep(0.2)


Stats = dict[str, dict[str, int]]
Row = tuple[str, float, float, float, Stats | None, Stats | None]


def native_rows(
    binary: Path,
    workdir: Path,
    base: str,
    url: str,
    feeds: dict[str, np.ndarray],
    outputs: list[str],
    requests: int,
) -> list[Row]:
    """Binary REST from the Go client: one at a time, then 8 and 32 clients."""
    body, headers = binary_body(feeds, outputs)
    body_file = workdir / "body.bin"
    body_file.write_bytes(body)
    length = int(headers["Inference-Header-Content-Length"])
    model = url.rsplit("/", 2)[-2]
    answer = httpx.post(url, content=body, headers=headers, timeout=60)
    answer.raise_for_status()
    rows: list[Row] = []
    with floor_server(binary, len(answer.content)) as floor_url:
        for clients in (1, 8, 32):
            how = "batch 1, one at a time" if clients == 1 else f"{clients} clients"
            count = max(requests, 2 * clients)
            p50, p99, rate = native_run(binary, floor_url, body_file, length, count, clients)
            rows.append((f"transport floor (Go server), {how}", p50, p99, rate, None, None))
            before = server_stats(base, model)
            p50, p99, rate = native_run(binary, url, body_file, length, count, clients)
            after = server_stats(base, model)
            rows.append((f"binary REST (Go client), {how}", p50, p99, rate, before, after))
    return rows


@contextlib.contextmanager
def floor_server(binary: Path, response_bytes: int) -> Iterator[str]:
    """benchmarks/serve_client serving the transport floor; yields its URL."""
    port = free_port()
    command = [str(binary), "-serve", f"127.0.0.1:{port}", "-response-bytes", str(response_bytes)]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}/floor"
    try:
        wait_ready(lambda: httpx.post(url, content=b"x", timeout=1), server, 30, "the floor server")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "out" / "lipsync")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--window-ms", type=float, default=0.0, help="kiln serve's default: 0")
    parser.add_argument(
        "--threads", type=int, default=None, help="engine threads, alone and in the server"
    )
    args = parser.parse_args()

    model, targets = from_output_dir(args.output)
    served = check_servable(model, pick_target(targets, "cpu", None), None)
    spec = model.spec
    rng = np.random.default_rng(0)
    feeds = {
        t.name: rng.standard_normal(t.concrete_shape(1)).astype(np.float32) for t in spec.inputs
    }

    # The engine alone, on the same artifact, input and thread count as the server.
    runner = open_runner(served, Path(parse_uri(served.candidate.artifact or "").key), args.threads)
    runner.prepare(feeds)
    alone = measure_alone(runner, 1, Benchmark(max_seconds=10))
    runner.close()
    r50 = alone.latency_ms.p50

    port, grpc_port = free_port(), free_port()
    server = start_server(args.output, port, grpc_port, args.window_ms, args.threads)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/v2/models/{model.metadata.name}/infer"
    paths = {
        "JSON REST": rest_call(url, json_body(feeds), {"content-type": "application/json"}),
        "binary REST": rest_call(url, *binary_body(feeds, spec.outputs)),
        "gRPC": grpc_call(f"127.0.0.1:{grpc_port}", model.metadata.name, feeds),
    }
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="kiln-serve-bench-"))
    binary = native_client(workdir)
    try:
        if binary is not None:
            rows += native_rows(binary, workdir, base, url, feeds, spec.outputs, args.requests)
        for label, make in paths.items():
            before = server_stats(base, model.metadata.name)
            s50, s99 = p50_p99(sequential(make, args.requests))
            after = server_stats(base, model.metadata.name)
            rows.append((f"{label}, batch 1, one at a time", s50, s99, 1000 / s50, before, after))
            for clients in (8, 32):
                before = after
                times, rate = concurrent(make, clients, max(args.requests, 2 * clients))
                after = server_stats(base, model.metadata.name)
                c50, c99 = p50_p99(times)
                label_c = f"{label}, {clients} clients"
                rows.append((label_c, c50, c99, rate, before, after))
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    size = len(json_body(feeds)) / 1e6
    print(
        f"engine: {served.candidate.name} ({model.metadata.name}); one request is "
        f"{size:.1f} MB as JSON, {sum(a.nbytes for a in feeds.values()) / 1e6:.1f} MB binary"
    )
    print(
        f"{'path':<54} {'p50 ms':>9} {'p99 ms':>9} {'x engine p50':>13} {'samples/s':>10} "
        f"{'x engine /s':>12} {'server ms':>10} {'compute ms':>11} {'overhead us':>12}"
    )
    rate = 1000 / r50
    print(
        f"{'engine alone, batch 1':<54} {r50:>9.2f} {alone.latency_ms.p99:>9.2f} {1.0:>13.2f} "
        f"{rate:>10.1f} {1.0:>12.2f}"
    )
    for label, p50, p99, throughput, start, end in rows:
        seen = breakdown(end, start) if start is not None and end is not None else None
        own = (
            f"{seen.server_ns / 1e6:>10.2f} {seen.compute_ns / 1e6:>11.2f} "
            f"{seen.overhead_ns / 1e3:>12.0f}"
            if seen is not None
            else f"{'-':>10} {'-':>11} {'-':>12}"
        )
        print(
            f"{label:<54} {p50:>9.2f} {p99:>9.2f} {p50 / r50:>13.2f} {throughput:>10.1f} "
            f"{throughput / rate:>12.2f} {own}"
        )
    floor = next((p50 for label, p50, *_ in rows if label.startswith("transport floor")), None)
    if floor is not None:
        print(
            f"least possible at batch 1 (engine alone + transport floor): {r50 + floor:.2f} ms, "
            f"{(r50 + floor) / r50:.2f}x the engine"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
