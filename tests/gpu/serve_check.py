"""`kiln serve` of an optimize result's CUDA engine, one real HTTP infer, checked against
PyTorch eager on the GPU (relative L2 error within 5 %, which every gate Kiln applies is under).

    python3 tests/gpu/serve_check.py RESULT_FOLDER PROGRAM.pt2

Prints one JSON line: the platform served, the target, and the error per output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 0.05
# The dry run's rehearsal (tests/gpu/on_device.py) serves the CPU target and checks it there.
DEVICE = "cpu" if os.environ.get("KILN_GPU_REHEARSE") == "1" else "cuda"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(url: str, server: subprocess.Popen[bytes], seconds: float = 300) -> dict[str, Any]:
    """The model's metadata, once the server answers; an exited server or an HTTP error ends
    the wait at once with its reason."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"kiln serve exited {server.returncode}")
        try:
            data: dict[str, Any] = json.load(urllib.request.urlopen(url, timeout=10))
            return data
        except urllib.error.HTTPError as exc:  # listening, but not serving that model
            raise SystemExit(f"{url}: {exc}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise SystemExit(f"kiln serve did not answer {url} within {seconds:.0f} s")


def infer(url: str, meta: dict[str, Any], batch: int) -> tuple[list[np.ndarray], list[Any]]:
    """Random inputs of the served signature at `batch`, and the server's outputs."""
    rng = np.random.default_rng(0)
    inputs = [
        {"name": t["name"], "datatype": t["datatype"], "shape": [batch, *t["shape"][1:]]}
        for t in meta["inputs"]
    ]
    arrays = [rng.standard_normal(t["shape"]).astype(np.float32) for t in inputs]
    body = {
        "inputs": [{**t, "data": a.ravel().tolist()} for t, a in zip(inputs, arrays, strict=True)]
    }
    request = urllib.request.Request(
        f"{url}/infer", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    outputs: list[Any] = json.load(urllib.request.urlopen(request, timeout=120))["outputs"]
    return arrays, outputs


def reference(program: Path, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    module = torch.export.load(str(program)).module().to(DEVICE)
    with torch.inference_mode():
        result = module(*[torch.from_numpy(a).to(DEVICE) for a in arrays])
    results = result if isinstance(result, (list, tuple)) else [result]
    return [r.float().cpu().numpy() for r in results]


def relative_l2(got: np.ndarray, expected: np.ndarray) -> float:
    scale = float(np.linalg.norm(expected)) or 1e-12
    return float(np.linalg.norm(got - expected)) / scale


def main(folder: Path, program: Path) -> int:
    port, grpc_port = free_port(), free_port()
    serve = [sys.executable, "-m", "kiln.cli.main", "serve", "--from", str(folder)]
    server = subprocess.Popen([*serve, "--port", str(port), "--grpc-port", str(grpc_port)])
    name = json.loads((folder / "model.json").read_text())["metadata"]["name"]
    try:
        url = f"http://127.0.0.1:{port}/v2/models/{name}"
        meta = wait_for(url, server)
        arrays, outputs = infer(url, meta, batch=2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = reference(program, arrays)
    errors = {
        o["name"]: relative_l2(np.asarray(o["data"], np.float32).reshape(o["shape"]), e)
        for o, e in zip(outputs, expected, strict=True)
    }
    print(json.dumps({"platform": meta.get("platform"), "relativeL2": errors}))
    return 0 if all(e <= TOLERANCE for e in errors.values()) else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
