"""Stage: measure a runner. Warm-up, then windows until the last few agree or a cap is hit.

The statistics are pure functions; `measure` is the only part that touches a clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from kiln.api.spec import Benchmark
from kiln.api.status import BatchBenchmark, Latency
from kiln.runtime.base import Runner


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def spread_percent(values: list[float]) -> float:
    """Relative standard deviation (sample), in percent."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return 100.0 * math.sqrt(var) / m if m > 0 else 0.0


def is_stable(window_means: list[float], count: int, tolerance_percent: float) -> bool:
    """The last `count` window means all lie within ±tolerance of their own average."""
    if len(window_means) < count:
        return False
    tail = window_means[-count:]
    centre = mean(tail)
    return all(abs(v - centre) <= centre * tolerance_percent / 100.0 for v in tail)


def summarize(
    windows: list[list[float]], batch: int, settings: Benchmark, stable: bool
) -> BatchBenchmark:
    """Statistics over the last `minWindows` windows (the stable part) of per-run seconds."""
    used = windows[-settings.min_windows :]
    latencies = sorted(v for w in used for v in w)
    avg = mean(latencies)
    ms = 1000.0
    return BatchBenchmark(
        batch_size=batch,
        latency_ms=Latency(
            p50=percentile(latencies, 50) * ms,
            p90=percentile(latencies, 90) * ms,
            p99=percentile(latencies, 99) * ms,
            mean=avg * ms,
        ),
        throughput=batch / avg,
        spread_percent=spread_percent([mean(w) for w in used]),
        windows=len(windows),
        iterations=sum(len(w) for w in windows),
        stable=stable,
    )


def measure(
    runner: Runner,
    batch: int,
    settings: Benchmark,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchBenchmark:
    """Time `runner.run()` on inputs already staged by `runner.prepare`."""
    for _ in range(settings.warmup_iterations):
        runner.run()
    windows: list[list[float]] = []
    means: list[float] = []
    started = clock()
    stable = False
    while len(windows) < settings.max_windows:
        window: list[float] = []
        for _ in range(settings.window_iterations):
            t0 = clock()
            runner.run()
            window.append(clock() - t0)
        windows.append(window)
        means.append(mean(window))
        if is_stable(means, settings.min_windows, settings.stability_percent):
            stable = True
            break
        if clock() - started > settings.max_seconds and len(windows) >= settings.min_windows:
            break
    return summarize(windows, batch, settings, stable)
