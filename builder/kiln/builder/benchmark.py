"""Stage: measure the baseline and every candidate of a target side by side.

Candidates measured one after another are not comparable: a slow spell of the machine during
the baseline's turn inflates every speedup, and the windows still agree with each other. So
the measurement runs in rounds. Each round times one window of every runner, in an order
rotated round by round, and a candidate's speedup is the median over rounds of its
throughput ratio to the baseline's *in the same round*, with a 95 % interval (kiln.builder.
stats). Rounds go on until every interval is within ±intervalPercent or a cap is hit.

The statistics and the stopping rule are pure; `measure_rounds` is the only part that runs
anything or reads a clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.api.spec import Benchmark
from kiln.api.status import BatchBenchmark, Interval, Latency
from kiln.builder.interference import (
    cpu_pressure_total,
    disturbance,
    noise_margin,
    pressure_percent,
)
from kiln.builder.stats import (
    MedianInterval,
    mean,
    median_interval,
    percentile,
    robust_spread_percent,
    spread_percent,
)
from kiln.runtime.base import Runner

Clock = Callable[[], float]
# A window is never more runs than this, however fast one run is (a 10 µs model at 0.5 s).
MAX_WINDOW_ITERATIONS = 100_000


@dataclass
class Timings:
    """One runner's windows, one per round (seconds per run), or why it stopped."""

    name: str
    per_window: int
    windows: list[list[float]] = field(default_factory=list)
    failure: str | None = None

    def means(self) -> list[float]:
        return [mean(w) for w in self.windows]


@dataclass(frozen=True)
class Rounds:
    """Everything one batch size's rounds measured."""

    timings: dict[str, Timings]
    converged: bool
    pressure_percent: float | None


def window_size(seconds_per_run: float, settings: Benchmark) -> int:
    """Runs per window: the spec's fixed count, else enough to fill `windowSeconds`."""
    if settings.window_iterations is not None:
        return settings.window_iterations
    if seconds_per_run <= 0:
        return MAX_WINDOW_ITERATIONS
    return max(1, min(MAX_WINDOW_ITERATIONS, round(settings.window_seconds / seconds_per_run)))


def rotated(names: list[str], round_index: int) -> list[str]:
    """Round r starts with the r-th runner, and every other round runs backwards: no runner
    always goes first, and none always follows the same other one (a runtime's threads
    winding down touch whoever runs next)."""
    if not names:
        return []
    shift = round_index % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if round_index % 2 else order


def speedup_ratios(baseline: Timings, candidate: Timings) -> list[float]:
    """Per round: the candidate's throughput over the baseline's in that round (the rounds
    both completed)."""
    rounds = min(len(baseline.windows), len(candidate.windows))
    return [
        mean(baseline.windows[r]) / mean(candidate.windows[r])
        for r in range(rounds)
        if mean(candidate.windows[r]) > 0
    ]


def speedup_interval(baseline: Timings, candidate: Timings) -> MedianInterval | None:
    ratios = speedup_ratios(baseline, candidate)
    return median_interval(ratios) if ratios else None


def converged(timings: dict[str, Timings], baseline: str, percent: float) -> bool:
    """Every running candidate's speedup interval is a 95 % one within ±`percent`."""
    base = timings.get(baseline)
    if base is None or base.failure is not None:
        return False  # no speedup to pin down: the caps end the rounds
    for name, t in timings.items():
        if name == baseline or t.failure is not None:
            continue
        interval = speedup_interval(base, t)
        if interval is None or not interval.narrow(percent):
            return False
    return True


def should_stop(
    rounds_done: int, elapsed: float, runners: int, done: bool, settings: Benchmark
) -> bool:
    if rounds_done < settings.min_rounds:
        return False
    return done or rounds_done >= settings.max_rounds or elapsed > settings.max_seconds * runners


def summarize(
    t: Timings,
    batch: int,
    interval: MedianInterval | None,
    converged: bool,
    rounds: Rounds,
    disturbed: str | None,
    margin: float | None = None,
) -> BatchBenchmark:
    latencies = sorted(v for w in t.windows for v in w)
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
        speedup=interval.median if interval else None,
        speedup_interval=Interval(low=interval.low, high=interval.high) if interval else None,
        spread_percent=spread_percent(t.means()),
        rounds=len(t.windows),
        iterations=len(latencies),
        converged=converged,
        disturbed=disturbed,
        noise_margin=margin,
        cpu_pressure_percent=rounds.pressure_percent,
    )


def results(
    rounds: Rounds, baseline: str, batch: int, settings: Benchmark
) -> dict[str, BatchBenchmark]:
    """Each runner that measured at least one window, with its speedup over the baseline. The
    baseline's own speedup is exactly 1, converged when the whole batch size's rounds were."""
    base = rounds.timings.get(baseline)
    usable_base = base if base is not None and base.windows else None
    # Robust to the odd slow window (a page fault, a timer tick): a disturbance is the
    # baseline's bulk moving, not one outlier.
    spread = robust_spread_percent(usable_base.means()) if usable_base else None
    disturbed = disturbance(
        rounds.pressure_percent,
        settings.max_cpu_pressure_percent,
        spread,
        settings.max_baseline_spread_percent,
    )
    margin = round(noise_margin(rounds.pressure_percent, spread), 3) if disturbed else None
    out: dict[str, BatchBenchmark] = {}
    for name, t in rounds.timings.items():
        if not t.windows or t.failure is not None:
            continue
        if name == baseline:
            exact = MedianInterval(1.0, 1.0, 1.0, 1.0)
            out[name] = summarize(t, batch, exact, rounds.converged, rounds, disturbed, margin)
            continue
        interval = speedup_interval(usable_base, t) if usable_base else None
        narrow = interval is not None and interval.narrow(settings.interval_percent)
        out[name] = summarize(t, batch, interval, narrow, rounds, disturbed, margin)
    return out


def _timed_runs(runner: Runner, count: int, clock: Clock) -> list[float]:
    out = []
    for _ in range(count):
        t0 = clock()
        runner.run()
        out.append(clock() - t0)
    return out


def warm_up(runner: Runner, settings: Benchmark, clock: Clock) -> int:
    """Run the warm-up; size the runner's window from its last warm-up runs."""
    runs = _timed_runs(runner, max(1, settings.warmup_iterations), clock)
    tail = runs[len(runs) // 2 :]
    return window_size(mean(tail), settings)


def measure_rounds(
    runners: dict[str, Runner],
    baseline: str,
    settings: Benchmark,
    clock: Clock = time.perf_counter,
    pressure: Callable[[], int | None] = cpu_pressure_total,
    error_text: Callable[[BaseException], str] = repr,
) -> Rounds:
    """Time `run()` of runners whose inputs `prepare` already staged, in interleaved rounds.
    A runner that raises stops there; the others go on."""
    timings: dict[str, Timings] = {}
    for name, runner in runners.items():
        try:
            timings[name] = Timings(name, warm_up(runner, settings, clock))
        except Exception as exc:
            timings[name] = Timings(name, 0, failure=error_text(exc))
    order = [n for n in runners if timings[n].failure is None]
    started, before = clock(), pressure()
    done, index = False, 0
    while True:
        for name in rotated([n for n in order if timings[n].failure is None], index):
            t = timings[name]
            try:
                # One untimed run first: the switch from the previous runtime (its threads
                # winding down, caches refilled) is a cost of interleaving that a server
                # running one engine never pays, and it would land on one runtime only.
                runners[name].run()
                t.windows.append(_timed_runs(runners[name], t.per_window, clock))
            except Exception as exc:
                t.failure = error_text(exc)
        index += 1
        active = sum(1 for n in order if timings[n].failure is None)
        done = converged(timings, baseline, settings.interval_percent)
        if active == 0 or should_stop(index, clock() - started, active, done, settings):
            break
    share = pressure_percent(before, pressure(), clock() - started)
    return Rounds(timings, done, share)


def measure_alone(runner: Runner, batch: int, settings: Benchmark) -> BatchBenchmark:
    """One runner on its own (no baseline to compare with): its latency and throughput."""
    rounds = measure_rounds({runner.name: runner}, runner.name, settings)
    failure = rounds.timings[runner.name].failure
    if failure is not None:
        raise RuntimeError(f"{runner.name} failed: {failure}")
    return results(rounds, runner.name, batch, settings)[runner.name]
