"""The statistics of a measurement (pure): percentiles, spread, and the 95 % interval of a
median.

The interval is the distribution-free one for a median from order statistics: with n values
sorted, [x_(k), x_(n+1-k)] covers the true median with probability 1 - 2 P(B <= k-1),
B ~ Binomial(n, 1/2). It assumes nothing about the shape of the noise (timing noise is skewed
and heavy-tailed), needs no random resampling (a re-run of the same numbers gives the same
interval), and is honest for small n: below 6 values no pair of order statistics reaches
95 %, and `median_interval` says so."""

from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        raise ValueError("no values")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def median(values: list[float]) -> float:
    return percentile(sorted(values), 50)


def spread_percent(values: list[float]) -> float:
    """Relative standard deviation (sample), in percent."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return 100.0 * math.sqrt(var) / m if m > 0 else 0.0


def robust_spread_percent(values: list[float]) -> float:
    """The spread of the bulk, in percent of the median: 1.4826 x the median absolute
    deviation (equal to the standard deviation for normal noise, blind to a few outliers)."""
    if len(values) < 2:
        return 0.0
    centre = median(values)
    mad = median([abs(v - centre) for v in values])
    return 100.0 * 1.4826 * mad / centre if centre > 0 else 0.0


def _binomial_cdf(k: int, n: int) -> float:
    """P(B <= k) for B ~ Binomial(n, 1/2)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n


@dataclass(frozen=True)
class MedianInterval:
    median: float
    low: float
    high: float
    coverage: float  # the exact coverage of [low, high]; below `CONFIDENCE` for n < 6

    @property
    def half_width_percent(self) -> float:
        """Half the interval's width relative to the median, in percent."""
        if self.median == 0:
            return math.inf
        return 100.0 * (self.high - self.low) / 2.0 / abs(self.median)

    def narrow(self, percent: float) -> bool:
        """A 95 % interval within ± `percent` of the median."""
        return self.coverage >= CONFIDENCE and self.half_width_percent <= percent


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> MedianInterval:
    """The median of `values` and the narrowest order-statistic interval around it that
    covers the true median with at least `confidence` (or [min, max] when none does)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    n = len(ordered)
    k = 1  # 1-based rank of the lower bound; [x_(1), x_(n)] is the widest there is
    while k < (n + 1) // 2 and 1.0 - 2.0 * _binomial_cdf(k, n) >= confidence:
        k += 1
    coverage = 1.0 - 2.0 * _binomial_cdf(k - 1, n)
    return MedianInterval(
        median=percentile(ordered, 50),
        low=ordered[k - 1],
        high=ordered[n - k],
        coverage=coverage,
    )
