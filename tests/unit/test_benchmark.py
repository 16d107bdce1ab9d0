from __future__ import annotations

import pytest

from kiln.api.spec import Benchmark
from kiln.builder.benchmark import is_stable, measure, percentile, spread_percent, summarize


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0


def test_stability_needs_agreeing_tail() -> None:
    assert not is_stable([1.0, 1.0], 3, 10)
    assert is_stable([5.0, 1.0, 1.05, 0.97], 3, 10)
    assert not is_stable([1.0, 1.3, 1.0], 3, 10)


def test_summary_uses_the_stable_tail() -> None:
    settings = Benchmark(min_windows=2)
    windows = [[1.0, 1.0], [0.010, 0.012], [0.011, 0.009]]
    result = summarize(windows, batch=4, settings=settings, stable=True)
    assert result.latency_ms.mean == pytest.approx(10.5)
    assert result.throughput == pytest.approx(4 / 0.0105)
    assert result.windows == 3
    assert result.iterations == 6
    assert result.spread_percent == pytest.approx(spread_percent([0.011, 0.010]))


class _ScriptedRunner:
    """Fault-injection stand-in: each run advances a fake clock by a scripted duration, so the
    loop's stopping rules are tested deterministically (real runners are tested elsewhere)."""

    name = "scripted"
    device = "cpu"

    def __init__(self, durations: list[float]) -> None:
        self.now = 0.0
        self.durations = durations
        self.runs = 0

    def clock(self) -> float:
        return self.now

    def prepare(self, feeds: object) -> None:
        pass

    def run(self) -> None:
        self.now += self.durations[min(self.runs, len(self.durations) - 1)]
        self.runs += 1

    def outputs(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


def test_measure_stops_once_windows_agree() -> None:
    runner = _ScriptedRunner([0.5] * 4 + [0.01] * 1000)  # slow warm-up, then steady
    settings = Benchmark(warmup_iterations=2, window_iterations=2, min_windows=3, max_windows=30)
    result = measure(runner, 1, settings, clock=runner.clock)  # type: ignore[arg-type]
    assert result.stable
    assert result.windows == 4  # the first window still holds the slow runs
    assert result.latency_ms.p50 == pytest.approx(10.0)


def test_measure_respects_the_time_cap() -> None:
    alternating = [0.01, 0.03] * 1000  # never stable within 1 %
    runner = _ScriptedRunner(alternating)
    settings = Benchmark(
        warmup_iterations=0,
        window_iterations=1,
        min_windows=2,
        max_windows=1000,
        stability_percent=1,
        max_seconds=0.5,
    )
    result = measure(runner, 2, settings, clock=runner.clock)  # type: ignore[arg-type]
    assert not result.stable
    assert 2 <= result.windows < 40
