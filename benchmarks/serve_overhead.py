"""Server overhead of `kiln serve`: end-to-end HTTP latency over the runtime's own latency on
the same engine and inputs, measured side by side in one run, at batch 1 (sequential) and
under concurrency with dynamic batching on.

    .venv/bin/python benchmarks/serve_overhead.py [OUTPUT_DIR] [--requests 40] [--concurrency 8]

OUTPUT_DIR is a `kiln optimize --output` folder (default: out/lipsync from `make demo`).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from kiln.api.spec import Benchmark
from kiln.builder.benchmark import measure_alone
from kiln.runtime.ort_runner import OrtRunner
from kiln.serve.loading import check_servable, from_output_dir, pick_target
from kiln.storage.objects import parse_uri

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    spread = 100 * statistics.pstdev(values) / statistics.mean(values)
    return p50 * 1000, p99 * 1000, spread


def body(feeds: dict[str, np.ndarray]) -> bytes:
    inputs = [
        {"name": n, "shape": list(a.shape), "datatype": "FP32", "data": a.reshape(-1).tolist()}
        for n, a in feeds.items()
    ]
    return json.dumps({"inputs": inputs}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=ROOT / "out" / "lipsync")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--window-ms", type=float, default=5.0)
    args = parser.parse_args()

    model, targets = from_output_dir(args.output)
    served = check_servable(model, pick_target(targets, "cpu", None), None)
    spec = model.spec
    rng = np.random.default_rng(0)
    feeds = {
        t.name: rng.standard_normal(t.concrete_shape(1)).astype(np.float32) for t in spec.inputs
    }
    payload = body(feeds)

    # The runtime alone, on the same artifact and input.
    runner = OrtRunner(
        "runtime", Path(parse_uri(served.candidate.artifact or "").key), spec.outputs, "cpu"
    )
    runner.prepare(feeds)
    runtime = measure_alone(runner, 1, Benchmark(max_seconds=10))

    port = free_port()
    kiln = str(Path(sys.executable).parent / "kiln")
    server = subprocess.Popen(
        [
            kiln,
            "serve",
            "--from",
            str(args.output),
            "--port",
            str(port),
            "--batch-window-ms",
            str(args.window_ms),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v2/models/{model.metadata.name}/infer"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start") from None
                time.sleep(0.3)
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=60) as client:
            for _ in range(3):  # warm the connection and the server's path
                client.post(url, content=payload, headers=headers).raise_for_status()
            sequential: list[float] = []
            for _ in range(args.requests):
                t0 = time.perf_counter()
                client.post(url, content=payload, headers=headers).raise_for_status()
                sequential.append(time.perf_counter() - t0)

            def one(_: Any) -> float:
                t0 = time.perf_counter()
                client.post(url, content=payload, headers=headers).raise_for_status()
                return time.perf_counter() - t0

            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                concurrent = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)

    r50 = runtime.latency_ms.p50
    s50, s99, s_spread = percentiles(sequential)
    c50, c99, c_spread = percentiles(concurrent)
    size = len(payload) / 1e6
    print(f"engine: {served.candidate.name} ({model.metadata.name}), body {size:.1f} MB JSON")
    print(f"{'path':<34} {'p50 ms':>9} {'p99 ms':>9} {'spread %':>9} {'x runtime p50':>14}")
    print(
        f"{'runtime alone, batch 1':<34} {r50:>9.2f} {runtime.latency_ms.p99:>9.2f} "
        f"{runtime.spread_percent:>9.1f} {1.0:>14.2f}"
    )
    seq = "HTTP, batch 1, sequential"
    print(f"{seq:<34} {s50:>9.2f} {s99:>9.2f} {s_spread:>9.1f} {s50 / r50:>14.2f}")
    print(
        f"{f'HTTP, {args.concurrency} clients, batching on':<34} {c50:>9.2f} {c99:>9.2f} "
        f"{c_spread:>9.1f} {c50 / r50:>14.2f}"
    )
    print(
        f"throughput: runtime {1000 / r50:.1f}/s, HTTP sequential {1000 / s50:.1f}/s, "
        f"HTTP concurrent {args.requests / wall:.1f}/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
