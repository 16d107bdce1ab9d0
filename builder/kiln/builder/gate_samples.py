"""Which samples the accuracy gates run on, and which the quantizer may calibrate on.

A gate checked on the very samples the INT8 scales were fitted to is checked in-sample: it
tells how well the scales fit those samples, not how the engine does on data it has not seen.
So the gates run on a validation set where the spec names one (`accuracy.uri`); otherwise
`accuracy.holdout` samples of the calibration set are set aside for them and never reach the
calibration reader. The split itself is pure; `gate_set` reads the chosen samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec, Precision
from kiln.api.status import AccuracyGate, GateData
from kiln.builder.calibration import SampleSet, iter_samples, take_samples
from kiln.builder.feeds import random_feeds, split
from kiln.runtime.base import Feeds

# Holding samples out may leave the quantizer fewer than calibration.samples (a set written
# with exactly that many is common): it calibrates on what is left, and says so in status, down
# to this share of what was asked. Below it the scales would rest on too little data: an error.
MIN_CALIBRATED_SHARE = 0.5

NOISE_SEED = 1234


@dataclass(frozen=True)
class Split:
    """The calibration set divided between the gates and the quantizer."""

    available: int  # samples in the calibration set
    asked: int  # spec.calibration.samples
    held_out: tuple[int, ...]  # positions in the set: the gates' samples, never calibrated on
    calibrate: int  # samples the quantizer reads, in shard order, skipping `held_out`

    @property
    def skip(self) -> frozenset[int]:
        return frozenset(self.held_out)

    def describe(self) -> str:
        text = (
            f"held out {len(self.held_out)} of {self.available} calibration samples "
            "(never calibrated on)"
        )
        if self.calibrate < self.asked:
            text += f"; calibrated on the other {self.calibrate}, not the {self.asked} asked for"
        return text


def evenly_spaced(available: int, count: int) -> tuple[int, ...]:
    """`count` distinct positions out of `available`, the middle of each of `count` equal
    strides: deterministic (no seed to record) and drawn from every shard, where the last
    samples of a set written in order (by time, by class) would not be representative."""
    if not 0 <= count <= available:
        raise ValueError(f"cannot pick {count} of {available} samples")
    return tuple((2 * i + 1) * available // (2 * count) for i in range(count))


def plan_split(available: int, asked: int, holdout: int) -> Split:
    """Hold out `holdout` samples; the quantizer gets up to `asked` of the rest."""
    left = available - holdout
    least = math.ceil(asked * MIN_CALIBRATED_SHARE)
    if left < least:
        raise KilnInputError(
            "spec.accuracy.holdout",
            f"holding out {holdout} of the {available} calibration samples leaves "
            f"{max(left, 0)} to calibrate on, under half of calibration.samples ({asked}); "
            "add samples, give a validation set in accuracy.uri, or lower accuracy.holdout "
            "(default: accuracy.samples)",
        )
    return Split(available, asked, evenly_spaced(available, holdout), min(asked, left))


def calibrate_all(found: SampleSet, asked: int) -> Split:
    """Nothing held out: the quantizer reads the first `asked` samples, as it always did."""
    return Split(found.available, asked, (), asked)


@dataclass(frozen=True)
class GateSet:
    """The samples every gate (parity, FP32, FP16, INT8) and the benchmark run on."""

    samples: list[Feeds]
    data: GateData
    source: str  # which samples, in words, for status
    identity: dict[str, Any]  # what the samples are, for result keys

    def status(self, warning: str | None) -> AccuracyGate:
        return AccuracyGate(
            data=self.data, samples=len(self.samples), source=self.source, warning=warning
        )


def plan(
    spec: OptimizedModelSpec, calibration: SampleSet | None, validation: SampleSet | None
) -> Split | None:
    """How the quantizer may use the calibration set; None when nothing is quantized.
    Raises the holdout's error before anything is built."""
    if calibration is None or spec.calibration is None or Precision.INT8 not in spec.precisions:
        return None
    asked, holdout = spec.calibration.samples, spec.accuracy.held_out()
    if validation is not None or holdout == 0:
        return calibrate_all(calibration, asked)
    return plan_split(calibration.available, asked, holdout)


def gate_set(
    spec: OptimizedModelSpec,
    calibration: SampleSet | None,
    validation: SampleSet | None,
    quantizer: Split | None,
) -> GateSet:
    count = spec.accuracy.samples
    if validation is not None:
        picked = evenly_spaced(validation.available, count)
        return GateSet(
            take_samples(validation, spec, picked),
            GateData.VALIDATION,
            f"validation set {validation.uri} ({count} samples)",
            {"data": GateData.VALIDATION.value, "set": validation.digest, "picked": picked},
        )
    if calibration is None:
        return GateSet(
            split(random_feeds(spec.inputs, count, seed=NOISE_SEED), spec.inputs),
            GateData.NOISE,
            f"{count} seeded random samples (no calibration or validation set)",
            {"data": GateData.NOISE.value, "count": count, "seed": NOISE_SEED},
        )
    if quantizer is not None and quantizer.held_out:
        return GateSet(
            take_samples(calibration, spec, quantizer.held_out),
            GateData.HELD_OUT,
            quantizer.describe(),
            {
                "data": GateData.HELD_OUT.value,
                "set": calibration.digest,
                "picked": quantizer.held_out,
            },
        )
    return _leading(spec, calibration, count, in_sample=quantizer is not None)


def _leading(
    spec: OptimizedModelSpec, calibration: SampleSet, count: int, in_sample: bool
) -> GateSet:
    """The first `count` calibration samples: what every gate ran on before held-out gates."""
    samples = list(iter_samples(calibration, spec, count))
    n = len(samples)
    if in_sample:
        data = GateData.IN_SAMPLE
        source = f"the first {n} calibration samples, calibrated on too (accuracy.holdout: 0)"
    else:
        data = GateData.CALIBRATION
        source = f"the first {n} calibration samples (no INT8: nothing was calibrated on them)"
    identity = {"data": data.value, "set": calibration.digest, "count": n}
    return GateSet(samples, data, source, identity)
