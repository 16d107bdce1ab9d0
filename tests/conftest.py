"""Fixtures shared by every tier: a tiny model with its spec and calibration set on disk, and a
real S3-compatible server (moto's server mode) started on 127.0.0.1 by the suite itself."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str]

    def client(self) -> Any:
        from tests.cluster.cluster import s3_client

        return s3_client(self.endpoint, self.env)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start; see {log}: {log.read_text()[-500:]}")
                time.sleep(0.2)
        yield S3Server(
            endpoint,
            {
                "AWS_ACCESS_KEY_ID": "kiln-test",
                "AWS_SECRET_ACCESS_KEY": "kiln-test-secret",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
            },
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


FAST_BENCHMARK = {
    "warmupIterations": 2,
    "windowIterations": 5,
    "minRounds": 2,
    "maxRounds": 4,
    "maxSeconds": 1.0,
    "threads": 1,
    # A disturbed measurement never promotes over the baseline (kiln.api.select); these tests
    # are about what gets built and served, and must pass beside CPU hogs, so nothing here
    # is flagged disturbed. The flags have their own tests (tests/unit/test_benchmark.py).
    "maxCpuPressurePercent": 100,
    "maxBaselineSpreadPercent": 1e9,
}


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "source": {"uri": "weights.pt", "format": "factory", "factory": "tiny_models:build"},
        "inputs": [{"name": "image", "shape": [-1, 3, 16, 16], "dtype": "float32"}],
        "outputs": ["logits"],
        "batchSizes": [1, 4],
        "backends": ["pytorch", "onnxruntime"],
        "precisions": ["fp32", "int8"],
        "calibration": {"uri": "calibration", "samples": 16, "method": "minmax"},
        "accuracy": {"samples": 4, "int8MaxDegradation": 0.2},
        "benchmark": dict(FAST_BENCHMARK),
        # A short benchmark's intervals are wide (4 rounds): beside CPU hogs an engine 4.7x
        # faster at the median can have a lower bound under 1.0, and promotion needs the
        # lower bound (kiln.api.select). Tests about what is built and served want a
        # selection whatever the noise; the promotion rule has its own tests.
        "selection": {"minSpeedup": 0.01},
        "artifacts": {"uri": "artifacts"},
    }
    spec.update(overrides)
    return spec


@dataclass
class TinyExample:
    root: Path

    @property
    def spec_path(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def write_spec(self, spec: dict[str, Any], name: str = "tiny") -> Path:
        document = {
            "apiVersion": "kiln.dev/v1alpha1",
            "kind": "OptimizedModel",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.spec_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.spec_path

    def manifests(self) -> list[Path]:
        return sorted(self.artifacts.rglob("manifest.json")) if self.artifacts.exists() else []


def write_calibration(folder: Path, samples: int, shards: int = 2, **arrays: Any) -> None:
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    per = samples // shards
    for i in range(shards):
        data = arrays or {"image": rng.standard_normal((per, 3, 16, 16)).astype(np.float32)}
        np.savez(folder / f"shard-{i}.npz", **data)


def make_tiny_example(root: Path, calibration: bool = True) -> TinyExample:
    """The tiny model's module and weights in `root`, with a calibration set unless told
    otherwise; no spec yet."""
    import torch

    from tests.fixtures.tiny_models import build

    shutil.copy(FIXTURES / "tiny_models.py", root / "tiny_models.py")
    torch.save(build().state_dict(), root / "weights.pt")
    if calibration:
        write_calibration(root / "calibration", 32)
    return TinyExample(root)


@pytest.fixture
def tiny(tmp_path: Path) -> TinyExample:
    """A factory-format tiny model (module next to the spec), its weights and calibration."""
    example = make_tiny_example(tmp_path)
    example.write_spec(tiny_spec())
    return example


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Downloads from S3 land in a per-test cache, never in the developer's ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok
    with the default simulated GPU node set), an S3 server and the pod executor, for the whole
    session; everything it started is stopped afterwards, also on failure or interrupt."""
    from tests.cluster import cluster as local_cluster

    root = tmp_path_factory.mktemp("cluster")
    info = local_cluster.up(root)
    try:
        yield info
    finally:
        local_cluster.down(root)


@pytest.fixture(scope="session")
def engine() -> Any:
    """The container tool that builds and runs Kiln's images (tests/images/engine.py):
    docker, or buildah installed from Debian's packages where possible; else SKIPPED."""
    from tests.images.engine import NoEngineError, find_engine

    try:
        return find_engine()
    except NoEngineError as exc:
        pytest.skip(f"no container tool: {exc}")


@pytest.fixture(scope="session")
def operator_image(engine: Any) -> Any:
    """The operator image (tests/images/build.py), built once per session: about 30 s on a
    warm base; the debootstrap base first where no registry can be reached."""
    from tests.images import build

    base_image = build.pick_base(engine, build.BaseChoice.AUTO, build.LOGS / "base.log")
    built = build.build(engine, "operator", base_image, tensorrt="no")
    print(built.line())
    return built
