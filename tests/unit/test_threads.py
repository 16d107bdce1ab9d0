from __future__ import annotations

from pathlib import Path

import pytest

from kiln.runtime.ort_runner import SPINNING, session_options
from kiln.runtime.threads import (
    available_threads,
    cpu_quota,
    parse_cfs,
    parse_cpu_max,
    schedulers,
)


def test_parse_cgroup_quotas() -> None:
    assert parse_cpu_max("max 100000\n") is None
    assert parse_cpu_max("150000 100000\n") == 1.5
    assert parse_cfs("-1\n", "100000\n") is None
    assert parse_cfs("400000", "100000") == 4.0


def cgroup_v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def test_a_v2_quota_rounds_down_within_the_affinity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kiln.runtime.threads.affinity", lambda: 8)
    budget = available_threads(root=cgroup_v2(tmp_path, "250000 100000\n"))
    assert budget.count == 2
    assert budget.source == "cgroup cpu.max 250000/100000"
    half = available_threads(root=cgroup_v2(tmp_path, "50000 100000\n"))
    assert half.count == 1  # never zero


def test_without_a_quota_the_affinity_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kiln.runtime.threads.affinity", lambda: 3)
    assert available_threads(root=cgroup_v2(tmp_path, "max 100000\n")).count == 3
    assert available_threads(root=tmp_path / "absent").source == "CPU affinity (3 CPUs)"
    # A quota above what the process may run on does not add threads.
    assert available_threads(root=cgroup_v2(tmp_path, "800000 100000\n")).count == 3


def test_cgroup_v1_and_the_spec_override(tmp_path: Path) -> None:
    v1 = tmp_path / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == (1.0, "cgroup cpu.cfs_quota_us 100000/100000")
    assert available_threads(5, root=tmp_path).source == "spec.benchmark.threads"
    assert available_threads(5, root=tmp_path).count == 5


def test_garbage_in_the_quota_file_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(cgroup_v2(tmp_path, "lots 100000")) is None


def test_the_status_says_how_each_runtime_waits() -> None:
    default = schedulers({})
    assert "OpenMP, waits spinning (libgomp's default)" in default
    assert "OpenVINO: TBB, 1 stream, threads unpinned" in default
    assert "OMP_WAIT_POLICY=PASSIVE" in schedulers({"OMP_WAIT_POLICY": " passive "})


def test_onnx_runtime_threads_sleep_when_idle() -> None:
    """Measured free alone and 1.5x beside CPU hogs (benchmarks/shared_node.py): the session
    options the benchmark and `kiln serve` share turn spinning off."""
    for threads in (None, 2):
        assert session_options(threads).get_session_config_entry(SPINNING) == "0"
    assert "ONNX Runtime: its own intra-op pool, spinning off" in schedulers({})
