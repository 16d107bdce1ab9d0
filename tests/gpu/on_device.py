"""The GPU tier on a lent GPU machine, one step per device call (tests/gpu/README.md):

    python3 tests/gpu/on_device.py join N          # append onnxruntime-gpu part N under /tmp
    python3 tests/gpu/on_device.py install         # the kit's wheels into /tmp/site, offline
    python3 tests/gpu/on_device.py run DIR [--only A,B]   # GPU items; logs, summary.json in DIR
    python3 tests/gpu/on_device.py run-torch-only DIR      # no onnxruntime-gpu needed
    python3 tests/gpu/on_device.py collect DIR OUT         # two files for $OUT

Standard library only until `install` has run. Each item of `run` is OK, FAILED or SKIPPED with
its reason; on a machine without CUDA every item is SKIPPED, and nothing is faked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.gpu.parts import join_part  # noqa: E402  (after the path: no package installed)

KIT = ROOT / ".gpu-kit"
JOINED = Path("/tmp/kiln-kit")
SITE = Path("/tmp/site")
PYTHON = sys.executable


@dataclass
class Item:
    name: str
    state: str  # OK, FAILED, SKIPPED
    reason: str = ""
    seconds: float = 0.0
    log: str = ""


def env() -> dict[str, str]:
    path = [str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "PYTHONUNBUFFERED": "1",
    }


def join(number: int) -> int:
    dest, complete = join_part(KIT / "ort", number, JOINED)
    print(f"{dest}: part {number} appended" + (", complete, SHA-256 matches" if complete else ""))
    return 0


def install() -> int:
    wheels = sorted((KIT / "wheels").glob("*.whl")) + sorted(JOINED.glob("*.whl"))
    if not any(w.name.startswith("onnxruntime_gpu") for w in wheels):
        print("note: onnxruntime-gpu is not joined: installing without it (run-torch-only)")
    subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--upgrade",
            "--target",
            str(SITE),
            *map(str, wheels),
        ],
        check=True,
    )
    print(f"installed {len(wheels)} wheels into {SITE}")
    return 0


def cuda_reason() -> str:
    """Empty when PyTorch sees a CUDA device here, else why not."""
    probe = subprocess.run(
        [PYTHON, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        env=env(),
        check=False,
    )
    if probe.stdout.strip() == "True":
        return ""
    return "no CUDA device (torch.cuda.is_available() is False)" + (
        f": {probe.stderr.strip().splitlines()[-1]}" if probe.returncode else ""
    )


def step(results: Path, name: str, argv: list[str], timeout: int = 1800) -> Item:
    log = results / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
                cwd=ROOT,
                timeout=timeout,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = -1
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
    state = "OK" if code == 0 else "FAILED"
    reason = "" if code == 0 else f"exit {code}: {tail[0][:300]}"
    return Item(name, state, reason, round(time.monotonic() - started, 1), log.name)


def spec_copy(source: Path, dest: Path, **changes: object) -> Path:
    """The example's spec with absolute URIs (it moves to another folder) and `changes`."""
    import yaml

    document = yaml.safe_load(source.read_text())
    spec = document["spec"]
    for where in (spec["source"], spec.get("calibration") or {}):
        if "uri" in where and "://" not in where["uri"]:
            where["uri"] = str((source.parent / where["uri"]).resolve())
    spec.update(changes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(document, sort_keys=False))
    return dest


def tiny(folder: Path, backends: list[str]) -> int:
    """A second model: the test suite's tiny CNN as a torch.export program, GPU target only."""
    import torch
    import yaml

    from tests.fixtures.tiny_models import build

    folder.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        build().eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(folder / "tiny.pt2"))
    spec = {
        "source": {"uri": "tiny.pt2"},
        "inputs": [{"name": "image", "shape": [-1, 3, 16, 16]}],
        "outputs": ["logits"],
        "batchSizes": [1, 8],
        "backends": backends,
        "precisions": ["fp32", "fp16"],
        "targets": {"cpu": False},
        "selection": {"minSpeedup": 0.01},
    }
    document = {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "tiny"},
        "spec": spec,
    }
    (folder / "spec.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return 0


def serve_check(out: Path, program: Path) -> int:
    """`kiln serve` of the CUDA target's engine, a real HTTP infer, checked against PyTorch
    eager on the GPU (relative L2 error within 5 %, which every gate Kiln applies is under)."""
    import socket
    import urllib.request

    import numpy as np
    import torch

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [PYTHON, "-m", "kiln.cli.main", "serve", "--from", str(out), "--port", str(port)],
        env=env(),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}/v2/models"
    try:
        name = json.loads((out / "model.json").read_text())["metadata"]["name"]
        meta = _wait_for(url, name, server)
        rng = np.random.default_rng(0)
        inputs = [
            {"name": t["name"], "datatype": t["datatype"], "shape": [2, *t["shape"][1:]]}
            for t in meta["inputs"]
        ]
        arrays = [rng.standard_normal(t["shape"]).astype(np.float32) for t in inputs]
        body = {
            "inputs": [
                {**t, "data": a.ravel().tolist()} for t, a in zip(inputs, arrays, strict=True)
            ]
        }
        request = urllib.request.Request(
            f"{url}/{meta['name']}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        answer = json.load(urllib.request.urlopen(request, timeout=120))["outputs"][0]
    finally:
        server.terminate()
        server.wait(timeout=30)
    got = np.asarray(answer["data"], np.float32).reshape(answer["shape"])
    module = torch.export.load(str(program)).module().to("cuda")
    with torch.inference_mode():
        result = module(*[torch.from_numpy(a).cuda() for a in arrays])
    expected = (result[0] if isinstance(result, (list, tuple)) else result).float().cpu().numpy()
    scale = float(np.linalg.norm(expected)) or 1e-12
    error = float(np.linalg.norm(got - expected)) / scale
    print(json.dumps({"platform": meta["platform"], "relativeL2": error}))
    return 0 if error <= 0.05 else 1


def _wait_for(url: str, name: str, server: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The model's metadata, once the server is ready."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"kiln serve exited {server.returncode}")
        try:
            data: dict[str, Any] = json.load(urllib.request.urlopen(f"{url}/{name}"))
            return data
        except urllib.error.HTTPError as exc:  # listening, but not serving that model
            raise SystemExit(f"{url}/{name}: {exc}") from None
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    raise SystemExit("kiln serve did not become ready")


def items(results: Path, torch_only: bool) -> list[tuple[str, list[str], str | None]]:
    """(name, command, the item it needs)."""
    me = str(Path(__file__).resolve())
    example = ROOT / "examples" / "lipsync" / "optimizedmodel.yaml"
    backends = ["pytorch", "aotinductor"]
    if not torch_only:
        backends += ["onnxruntime", "tensorrt"]
    lipsync = spec_copy(example, results / "lipsync.yaml", backends=backends)
    kiln = [PYTHON, "-m", "kiln.cli.main", "optimize"]
    store = ["--artifacts", str(results / "artifacts")]
    pytest = [PYTHON, "-m", "pytest", "tests/gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    tiny_out, tiny_spec = str(results / "tiny/out"), str(results / "tiny/spec.yaml")
    lipsync_pt2 = str(ROOT / "examples/lipsync/data/lipsync.pt2")
    return [
        ("gpu-tests", [*pytest, f"--junitxml={results / 'gpu-tests.xml'}"], None),
        ("optimize-lipsync", [*kiln, str(lipsync), "-o", str(results / "lipsync"), *store], None),
        (
            "serve-lipsync",
            [PYTHON, me, "serve-check", str(results / "lipsync"), lipsync_pt2],
            "optimize-lipsync",
        ),
        ("tiny-model", [PYTHON, me, "tiny", str(results / "tiny"), ",".join(backends)], None),
        ("optimize-tiny", [*kiln, tiny_spec, "-o", tiny_out, *store], "tiny-model"),
        (
            "serve-tiny",
            [PYTHON, me, "serve-check", tiny_out, str(results / "tiny/tiny.pt2")],
            "optimize-tiny",
        ),
        (
            "benchmark",
            [PYTHON, "benchmarks/runtime_speedup.py", str(lipsync), "--seconds", "10"],
            None,
        ),
    ]


def run(results: Path, torch_only: bool, only: set[str] | None = None) -> int:
    """Every item (or those named in `only`, to spread them over device calls); the summary
    of earlier calls into the same folder is kept."""
    results.mkdir(parents=True, exist_ok=True)
    if not (ROOT / "examples/lipsync/data/lipsync.pt2").exists() and not cuda_reason():
        subprocess.run(
            [PYTHON, "examples/lipsync/make_example.py"], cwd=ROOT, env=env(), check=True
        )
    why = cuda_reason()
    done: list[Item] = []
    state: dict[str, str] = {}
    earlier = results / "summary.json"
    if earlier.exists():
        for item in json.loads(earlier.read_text())["items"]:
            if only is not None and item["name"] not in only:
                state[item["name"]] = item["state"]
                done.append(Item(**item))
    for name, argv, needs in items(results, torch_only):
        if only is not None and name not in only:
            continue
        if why:
            done.append(Item(name, "SKIPPED", why))
        elif needs is not None and state.get(needs) != "OK":
            done.append(Item(name, "SKIPPED", f"{needs} did not succeed"))
        else:
            done.append(step(results, name, argv))
        print(
            f"{name:<18} {done[-1].state:<8} {done[-1].seconds:>7.1f}s  {done[-1].reason}",
            flush=True,
        )
    order = [name for name, _, _ in items(results, torch_only)]
    done.sort(key=lambda d: order.index(d.name) if d.name in order else len(order))
    summary = {"items": [asdict(d) for d in done], "torchOnly": torch_only}
    (results / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if any(d.state == "FAILED" for d in done) else 0


def collect(results: Path, out: Path) -> int:
    """Two files for the device tool to bring back ($OUT holds at most 8): summary.json (the
    items, each optimize's status summary and selections) and logs.txt (each log's tail)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((results / "summary.json").read_text())
    statuses = {}
    for status in sorted(results.glob("**/status.json")):
        data = json.loads(status.read_text())
        statuses[str(status.relative_to(results))] = {
            "phase": data.get("phase"),
            "summary": data.get("summary"),
            "targets": [
                {k: t.get(k) for k in ("name", "state", "selected", "selectionReason", "reason")}
                | {
                    "candidates": [
                        {
                            k: c.get(k)
                            for k in (
                                "name",
                                "state",
                                "speedup",
                                "speedupInterval",
                                "reason",
                                "accuracy",
                                "benchmarks",
                            )
                        }
                        for c in t.get("candidates", [])
                    ]
                }
                for t in data.get("targets", [])
            ],
        }
    summary["statuses"] = statuses
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "logs.txt").open("w") as logs:
        for log in sorted(results.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-150:]
            logs.write(f"===== {log.name} (last {len(lines)} lines)\n" + "\n".join(lines) + "\n")
    print(f"collected into {out}")
    return 0


def main(argv: list[str]) -> int:
    command, *rest = argv or ["help"]
    if command == "join":
        return join(int(rest[0]))
    if command == "install":
        return install()
    if command in ("run", "run-torch-only"):
        only = set(rest[2].split(",")) if len(rest) > 2 and rest[1] == "--only" else None
        return run(Path(rest[0]), command == "run-torch-only", only)
    if command == "collect":
        return collect(Path(rest[0]), Path(rest[1]))
    if command == "tiny":
        return tiny(Path(rest[0]), rest[1].split(","))
    if command == "serve-check":
        return serve_check(Path(rest[0]), Path(rest[1]))
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
