from __future__ import annotations

import random
from collections.abc import Callable
from typing import cast

import pytest

from kiln.api.spec import Benchmark
from kiln.api.status import BatchBenchmark
from kiln.builder.benchmark import (
    Timings,
    measure_rounds,
    results,
    rotated,
    speedup_ratios,
    window_size,
)
from kiln.builder.interference import (
    disturbance,
    noise_margin,
    parse_some_total,
    pressure_percent,
)
from kiln.runtime.base import Runner


class Machine:
    """Fault injection: a fake clock that scripted runners advance. `slowdown(now)` scales
    every run, as a neighbour hogging the CPU would; real runners are tested elsewhere."""

    def __init__(self, slowdown: Callable[[float], float] = lambda now: 1.0) -> None:
        self.now = 0.0
        self.slowdown = slowdown
        self.log: list[str] = []

    def clock(self) -> float:
        return self.now


class ScriptedRunner:
    device = "cpu"

    def __init__(
        self, machine: Machine, name: str, seconds: float, fail_after: int | None = None
    ) -> None:
        self.machine, self.name, self.seconds = machine, name, seconds
        self.fail_after = fail_after
        self.runs = 0

    def prepare(self, feeds: object) -> None:
        pass

    def run(self) -> None:
        self.runs += 1
        if self.fail_after is not None and self.runs > self.fail_after:
            raise RuntimeError("device lost")
        self.machine.log.append(self.name)
        self.machine.now += self.seconds * self.machine.slowdown(self.machine.now)

    def outputs(self) -> list[object]:
        return []

    def close(self) -> None:
        pass


SETTINGS = Benchmark(warmup_iterations=2, window_iterations=4, min_rounds=6, max_rounds=40)


def no_pressure() -> int | None:
    return None


def as_runners(runners: list[ScriptedRunner]) -> dict[str, Runner]:
    return {r.name: cast(Runner, r) for r in runners}


def run(
    machine: Machine, runners: list[ScriptedRunner], settings: Benchmark = SETTINGS
) -> dict[str, BatchBenchmark]:
    rounds = measure_rounds(
        as_runners(runners),
        "base",
        settings,
        clock=machine.clock,
        pressure=no_pressure,
    )
    return results(rounds, "base", 8, settings)


def test_a_slow_spell_hits_baseline_and_candidate_alike() -> None:
    # The machine is 5x slower for a stretch that, measured one after the other, would land on
    # the baseline's turn only and show a 10x "speedup".
    machine = Machine(slowdown=lambda now: 5.0 if 0.2 < now < 0.6 else 1.0)
    out = run(
        machine, [ScriptedRunner(machine, "base", 0.01), ScriptedRunner(machine, "ort", 0.005)]
    )
    ort = out["ort"]
    assert ort.speedup == pytest.approx(2.0, rel=0.25)
    assert ort.speedup_interval is not None
    assert ort.speedup_interval.low <= 2.0 <= ort.speedup_interval.high
    assert out["base"].speedup == 1.0


def test_quiet_rounds_converge_at_the_minimum() -> None:
    machine = Machine()
    out = run(
        machine, [ScriptedRunner(machine, "base", 0.01), ScriptedRunner(machine, "ort", 0.004)]
    )
    ort = out["ort"]
    assert ort.converged
    assert out["base"].converged
    assert ort.rounds == SETTINGS.min_rounds
    assert ort.speedup == pytest.approx(2.5)
    assert ort.speedup_interval is not None
    assert (ort.speedup_interval.low, ort.speedup_interval.high) == pytest.approx((2.5, 2.5))
    assert ort.throughput == pytest.approx(8 / 0.004)
    assert ort.iterations == SETTINGS.min_rounds * 4


def test_noise_that_never_settles_stops_at_the_cap_unconverged() -> None:
    noise = random.Random(7)
    machine = Machine(slowdown=lambda now: noise.uniform(1.0, 3.0))  # every run differs
    settings = SETTINGS.model_copy(update={"max_rounds": 9, "interval_percent": 0.1})
    out = run(
        machine,
        [ScriptedRunner(machine, "base", 0.01), ScriptedRunner(machine, "ort", 0.01)],
        settings,
    )
    assert out["ort"].rounds == 9
    assert not out["ort"].converged
    assert not out["base"].converged


def test_rounds_interleave_with_the_order_rotated() -> None:
    machine = Machine()
    names = ["base", "a", "b"]
    run(machine, [ScriptedRunner(machine, n, 0.01) for n in names])
    timed = machine.log[len(names) * SETTINGS.warmup_iterations :]
    # A window is one settling run and 4 timed runs of one runner.
    windows = [timed[i] for i in range(0, len(timed), 5)]
    assert windows[:9] == ["base", "a", "b", "base", "b", "a", "b", "base", "a"]
    assert rotated(names, 2) == ["b", "base", "a"]
    # Over rounds, every runner goes first and follows each of the others.
    orders = [rotated(names, r) for r in range(6)]
    assert {o[0] for o in orders} == set(names)
    follows = {(o[i - 1], o[i]) for o in orders for i in range(1, len(o))}
    assert follows == {(x, y) for x in names for y in names if x != y}


def test_a_runner_that_fails_stops_and_the_rest_go_on() -> None:
    machine = Machine()
    rounds = measure_rounds(
        as_runners(
            [
                ScriptedRunner(machine, "base", 0.01),
                ScriptedRunner(machine, "bad", 0.01, fail_after=10),
                ScriptedRunner(machine, "ort", 0.005),
            ]
        ),
        "base",
        SETTINGS,
        clock=machine.clock,
        pressure=no_pressure,
    )
    assert rounds.timings["bad"].failure is not None
    out = results(rounds, "base", 1, SETTINGS)
    assert set(out) == {"base", "ort"}
    assert out["ort"].converged


def test_cpu_pressure_and_a_varying_baseline_mark_the_numbers_disturbed() -> None:
    machine = Machine()
    counter = iter([0, 10**9])  # a full second of pressure over a short run

    rounds = measure_rounds(
        as_runners([ScriptedRunner(machine, "base", 0.01), ScriptedRunner(machine, "ort", 0.005)]),
        "base",
        SETTINGS,
        clock=machine.clock,
        pressure=lambda: next(counter),
    )
    out = results(rounds, "base", 1, SETTINGS)
    assert out["ort"].disturbed is not None
    assert "CPU pressure" in out["ort"].disturbed

    noise = random.Random(3)
    jumpy = Machine(slowdown=lambda now: noise.choice([1.0, 1.0, 3.0]))
    out = run(jumpy, [ScriptedRunner(jumpy, "base", 0.02), ScriptedRunner(jumpy, "ort", 0.02)])
    assert out["base"].disturbed is not None
    assert "baseline varied" in out["base"].disturbed
    # Disturbed numbers carry the margin the selection discounts them by; clean ones none.
    assert out["ort"].noise_margin is not None
    assert out["ort"].noise_margin > 1.0
    quiet = Machine()
    calm = run(quiet, [ScriptedRunner(quiet, "base", 0.02), ScriptedRunner(quiet, "ort", 0.01)])
    assert calm["ort"].disturbed is None
    assert calm["ort"].noise_margin is None


@pytest.mark.parametrize(
    ("pressure", "spread", "margin"),
    [
        (None, None, 1.0),
        (0.0, 11.0, 1.11),  # the baseline's spread alone
        (50.0, 0.0, 2.0),  # half the time taken: up to twice as slow
        (3.0, 11.0, 1.11 / 0.97),
        (100.0, 0.0, 10.0),  # capped: nothing measured under full pressure promotes by 10x
        (-1.0, -5.0, 1.0),  # counters that went backwards are no disturbance
    ],
)
def test_the_noise_margin_bounds_what_a_disturbance_could_do(
    pressure: float | None, spread: float | None, margin: float
) -> None:
    assert noise_margin(pressure, spread) == pytest.approx(margin)


def test_window_size_fills_window_seconds() -> None:
    settings = Benchmark(window_seconds=0.5)
    assert window_size(0.1, settings) == 5
    assert window_size(1.0, settings) == 1
    assert window_size(1e-9, settings) == 100_000
    assert window_size(0.1, settings.model_copy(update={"window_iterations": 3})) == 3


def test_ratios_pair_rounds() -> None:
    base = Timings("base", 2, [[0.02, 0.02], [0.04, 0.04]])
    cand = Timings("c", 2, [[0.01, 0.01], [0.01, 0.01], [0.5]])
    assert speedup_ratios(base, cand) == pytest.approx([2.0, 4.0])


def test_cpu_pressure_reading() -> None:
    text = "some avg10=1.84 avg60=3.09 avg300=10.21 total=432371034\nfull avg10=0.00 total=0\n"
    assert parse_some_total(text) == 432371034
    assert parse_some_total("garbage") is None
    assert pressure_percent(1_000_000, 1_500_000, 2.0) == pytest.approx(25.0)
    assert pressure_percent(None, 5, 1.0) is None
    assert disturbance(25.0, 10.0, 3.0, 10.0) is not None
    assert disturbance(5.0, 10.0, 3.0, 10.0) is None
    assert disturbance(None, 10.0, None, 10.0) is None
