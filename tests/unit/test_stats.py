from __future__ import annotations

import random

import pytest

from kiln.builder.stats import median, median_interval, percentile, spread_percent


def test_percentile_interpolates() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert spread_percent([1.0, 1.0]) == 0.0


@pytest.mark.parametrize(
    ("n", "low_rank", "coverage"),
    [
        # n, 1-based rank of the lower bound, exact coverage 1 - 2 P(Binomial(n, 1/2) < rank)
        (5, 1, 1 - 2 / 32),  # below 95 %: no interval of 5 values is a 95 % one
        (6, 1, 1 - 2 / 64),
        (8, 1, 1 - 2 / 256),
        (9, 2, 1 - 2 * 10 / 512),
        (20, 6, 1 - 2 * 1 / 2**20 * sum(__import__("math").comb(20, i) for i in range(6))),
    ],
)
def test_order_statistic_interval_of_the_median(n: int, low_rank: int, coverage: float) -> None:
    values = [float(v) for v in range(1, n + 1)]
    random.Random(n).shuffle(values)
    interval = median_interval(values)
    assert interval.low == low_rank
    assert interval.high == n + 1 - low_rank
    assert interval.coverage == pytest.approx(coverage)
    assert interval.median == pytest.approx((n + 1) / 2)


def test_narrow_needs_95_percent_and_the_width() -> None:
    assert not median_interval([2.0] * 5).narrow(5)  # exact, but 5 values cannot say 95 %
    assert median_interval([2.0] * 6).narrow(5)
    wide = median_interval([1.8, 1.9, 2.0, 2.0, 2.1, 2.2])  # [1.8, 2.2]: ±10 %
    assert wide.half_width_percent == pytest.approx(10.0)
    assert not wide.narrow(5)
    assert wide.narrow(10.01)


def test_the_interval_covers_the_median_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    hits = 0
    trials = 2000
    for _ in range(trials):
        sample = [rng.lognormvariate(0.0, 0.3) for _ in range(12)]  # true median 1.0
        interval = median_interval(sample)
        hits += interval.low <= 1.0 <= interval.high
    assert 0.95 <= hits / trials <= 0.995  # n = 12: [x_3, x_10] covers 96.1 %
