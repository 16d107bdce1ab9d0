"""Can the benchmark see that something else competed for the CPU while it measured?

Two signals, either of which marks a measurement disturbed instead of publishing a
clean-looking number:
- CPU pressure: Linux PSI (/proc/pressure/cpu) counts the microseconds during which some
  runnable task waited for a CPU. Its share of the rounds' wall time is the share of time the
  machine was oversubscribed, by a neighbour or by anything else.
- A varying baseline: the baseline's windows differ round to round by more than a bound,
  which a quiet machine does not do.

Reading the counter is I/O; the verdict is a pure function."""

from __future__ import annotations

from pathlib import Path

PRESSURE = Path("/proc/pressure/cpu")


def parse_some_total(text: str) -> int | None:
    """Microseconds of `some` CPU pressure since boot, from the PSI file's first line:
    `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345`."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                if field.startswith("total="):
                    try:
                        return int(field.removeprefix("total="))
                    except ValueError:
                        return None
    return None


def cpu_pressure_total(path: Path = PRESSURE) -> int | None:
    """The `some` counter, or None where PSI is unavailable (old kernels, some sandboxes)."""
    try:
        return parse_some_total(path.read_text(encoding="ascii"))
    except (OSError, UnicodeDecodeError):
        return None


def pressure_percent(before: int | None, after: int | None, seconds: float) -> float | None:
    """Share of `seconds` with CPU pressure, in percent, between two counter readings."""
    if before is None or after is None or seconds <= 0:
        return None
    return max(0.0, 100.0 * (after - before) / 1e6 / seconds)


def disturbance(
    pressure: float | None,
    max_pressure: float,
    baseline_spread: float | None,
    max_spread: float,
) -> str | None:
    """Why a measurement is disturbed, in words, or None when neither signal fired."""
    reasons = []
    if pressure is not None and pressure > max_pressure:
        reasons.append(
            f"CPU pressure {pressure:.0f}% of the time (over {max_pressure:g}%): "
            "something else competed for the CPUs"
        )
    if baseline_spread is not None and baseline_spread > max_spread:
        reasons.append(
            f"the baseline varied {baseline_spread:.0f}% between rounds (over {max_spread:g}%)"
        )
    return "; ".join(reasons) or None


# Beyond this share of pressure no ratio means anything: the margin stops at 10x.
_MAX_PRESSURE_SHARE = 0.9


def noise_margin(pressure: float | None, baseline_spread: float | None) -> float:
    """How far a disturbance could have moved a speedup measured in interleaved rounds, as a
    factor: a competitor that took a share p of the CPU during a candidate's windows and none
    of the baseline's slows it by up to 1 / (1 - p), and the baseline's own round-to-round
    spread s moves each ratio by up to 1 + s. A disturbed measurement's interval is divided by
    it before it may promote: disturbed, a 9.6x [8.9-10.0] still clears minSpeedup 1.05x by
    far more than any such noise; a 1.2x does not."""
    share = min(max(pressure or 0.0, 0.0) / 100.0, _MAX_PRESSURE_SHARE)
    return (1.0 + max(baseline_spread or 0.0, 0.0) / 100.0) / (1.0 - share)
