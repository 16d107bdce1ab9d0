"""Pick the candidate to serve (pure), used by the builder and, on stored results, by the
operator.

Only verified, servable candidates that beat the minimum speedup over the baseline beyond the
noise qualify: the lower bound of the speedup's interval meets `minSpeedup`, and on a
measurement flagged as disturbed it still does once divided by the disturbance's noise margin
(`kiln.builder.interference.noise_margin`). A median that meets it with an interval that does
not is no promotion: the target keeps its baseline, and the reason says to measure again.
Among them the guide Kiln grew from decides: the simplest engine is served unless a more
complex one pays for its extra accuracy risk and upkeep, that is, is faster by more than
`selection.preferSimplerWithin` *and* beyond the noise of the measurement."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from kiln.api.capacity import capacity
from kiln.api.spec import Backend, Objective, OptimizedModelSpec, Precision, Selection
from kiln.api.status import CandidateStatus, Interval, State, TargetStatus

# Only these can be loaded by `kiln serve`; torch.compile is measured for comparison.
SERVABLE = frozenset({Backend.ONNXRUNTIME, Backend.OPENVINO, Backend.AOTINDUCTOR, Backend.TENSORRT})


class Complexity(IntEnum):
    """Simplest first: what a candidate costs in accuracy risk and upkeep."""

    FP32 = 0  # ONNX Runtime, OpenVINO, AOTInductor: FP32 engines with the reference numerics
    FP16 = 1  # half precision (FP16, bf16): a looser accuracy gate
    TENSORRT_FP16 = 2  # an engine tied to one GPU architecture and one TensorRT version
    INT8 = 3  # calibration data and a quality check to keep up


def complexity(backend: Backend, precision: Precision) -> Complexity:
    if precision is Precision.INT8:
        return Complexity.INT8
    if backend is Backend.TENSORRT:
        return Complexity.TENSORRT_FP16
    if precision in (Precision.FP16, Precision.BF16):
        return Complexity.FP16
    return Complexity.FP32


@dataclass(frozen=True)
class Challenge:
    """A more complex candidate against the simpler one being served."""

    wins: bool
    note: str
    ratio: float = 1.0  # complex_'s metric over simpler's
    reasons: tuple[str, ...] = ()  # why it does not win (empty when it wins)


def _metric(c: CandidateStatus, objective: Objective) -> float:
    """Bigger is better: throughput, or 1 / p50 latency for minLatency."""
    if objective is Objective.MIN_LATENCY:
        return 1.0 / c.latency_ms.p50 if c.latency_ms and c.latency_ms.p50 > 0 else 0.0
    return c.throughput or 0.0


def _interval(c: CandidateStatus) -> Interval:
    """The speedup's interval; a result without one (measured by an older builder) counts as
    an exact number."""
    speedup = c.speedup or 0.0
    return c.speedup_interval or Interval(low=speedup, high=speedup)


def challenge(
    simpler: CandidateStatus, complex_: CandidateStatus, objective: Objective, within: float
) -> Challenge:
    """Does `complex_` replace `simpler`? Only if faster by more than `within`, with speedup
    intervals that do not overlap, and on a disturbed measurement intervals that stay apart
    even stretched by its noise margin. The note names every reason it does not."""
    base = _metric(simpler, objective)
    ratio = _metric(complex_, objective) / base if base > 0 else float("inf")
    head = f"{complex_.name} is {ratio:.2f}x of {simpler.name}"
    reasons = []
    if _interval(complex_).overlaps(_interval(simpler)):
        reasons.append("intervals overlap")
    if ratio < 1.0:
        reasons.append("slower")  # "within preferSimplerWithin" would read as nearly as fast
    elif ratio <= 1.0 + within:
        reasons.append(f"within preferSimplerWithin {within:g}")
    if complex_.disturbed and not _clear_of_noise(complex_, simpler):
        reasons.append(f"measurement disturbed: {complex_.disturbed}")
    if reasons:
        note = f"{head} ({'; '.join(reasons)}): serving {simpler.name}"
        return Challenge(False, note, ratio, tuple(reasons))
    return Challenge(True, f"{head}, beyond noise and preferSimplerWithin {within:g}", ratio)


def simplest_that_pays(
    qualified: list[CandidateStatus], objective: Objective, within: float
) -> tuple[CandidateStatus, list[str]]:
    """Walk the complexity ranks from the simplest; each rank's best challenges the candidate
    served so far. Returns the winner and one note per challenge. `within` 0: fastest wins."""
    if within == 0:
        return max(qualified, key=lambda c: _metric(c, objective)), []
    best_per_rank: dict[Complexity, CandidateStatus] = {}
    for c in sorted(qualified, key=lambda c: -_metric(c, objective)):
        best_per_rank.setdefault(complexity(c.backend, c.precision), c)
    ranks = sorted(best_per_rank)
    served = best_per_rank[ranks[0]]
    notes: list[str] = []
    for rank in ranks[1:]:
        verdict = challenge(served, best_per_rank[rank], objective, within)
        notes.append(verdict.note)
        if verdict.wins:
            served = best_per_rank[rank]
    return served, notes


def qualified(
    candidates: list[CandidateStatus], baseline: str | None, selection: Selection
) -> tuple[list[CandidateStatus], str]:
    """The candidates the selection may choose from, or why there are none."""
    if not any(_measured(c) for c in candidates):
        return [], "no candidate was measured"
    verified, servable = _verified(candidates, baseline)
    fast = _fast_at_median(servable, selection)
    # One candidate beyond noise is enough to promote: the others can then only displace it
    # through `challenge`, whose non-overlapping intervals and disturbed flag keep the same
    # rule (an interval clear of one whose lower bound meets minSpeedup meets it too).
    if _only_noise(fast, selection):
        return [], _why_unsure(fast, selection)
    return fast, "" if fast else _why_none(verified, servable, selection)


def _clear_of_noise(complex_: CandidateStatus, simpler: CandidateStatus) -> bool:
    """The two intervals stay apart even stretched by the disturbance's margin (both were
    measured in the same rounds, so under the same disturbance)."""
    margin = complex_.noise_margin
    if margin is None:
        return False
    return _interval(complex_).low / margin > _interval(simpler).high * margin


def _measured(c: CandidateStatus) -> bool:
    return c.state is State.OK and c.throughput is not None


def _verified(
    candidates: list[CandidateStatus], baseline: str | None
) -> tuple[list[CandidateStatus], list[CandidateStatus]]:
    """The measured candidates that passed their gates, and those of them a server can run
    in the baseline's place."""
    verified = [c for c in candidates if _measured(c) and c.accuracy and c.accuracy.passed]
    return verified, [c for c in verified if c.backend in SERVABLE and c.name != baseline]


def _fast_at_median(servable: list[CandidateStatus], selection: Selection) -> list[CandidateStatus]:
    fast = [c for c in servable if (c.speedup or 0.0) >= selection.min_speedup]
    if selection.objective is Objective.MAX_THROUGHPUT_UNDER_LATENCY:
        budget = selection.latency_budget_ms or 0.0
        fast = [c for c in fast if c.latency_ms is not None and c.latency_ms.p99 <= budget]
    return fast


def _only_noise(fast: list[CandidateStatus], selection: Selection) -> bool:
    return bool(fast) and all(noise_problem(c, selection.min_speedup) for c in fast)


def unsure(result: TargetStatus, spec: OptimizedModelSpec) -> bool:
    """Whether the decision keeps the baseline only because the measurement is too noisy to
    promote (a candidate meets minSpeedup at its median, none beyond noise): what measuring
    again may settle, and nothing else would."""
    if result.state is not State.OK:
        return False
    batch = spec.decision_batch_size()
    candidates = [at_decision_batch(c, batch) for c in result.candidates]
    _, servable = _verified(candidates, result.baseline)
    return _only_noise(_fast_at_median(servable, spec.selection), spec.selection)


def noise_problem(c: CandidateStatus, min_speedup: float) -> str | None:
    """Why `c`'s speedup does not meet `min_speedup` beyond the noise, or None if it does. A
    disturbed measurement meets it only with its interval divided by its noise margin (one
    without a margin, from an older builder, never)."""
    low = _interval(c).low
    if c.disturbed:
        if c.noise_margin is None or low / c.noise_margin < min_speedup:
            return f"measurement disturbed: {c.disturbed}"
        return None
    if low < min_speedup:
        return f"its 95 % interval reaches down to {low:.2f}x"
    return None


def _why_unsure(fast: list[CandidateStatus], selection: Selection) -> str:
    """The reason for keeping the baseline when candidates meet minSpeedup at their median
    only: the best of them, its interval, what spoils it, and what to do."""
    best = max(fast, key=lambda c: c.speedup or 0.0)
    interval = _interval(best)
    return (
        f"not beyond noise: {best.name} measured {best.speedup or 0.0:.2f}x "
        f"[{interval.low:.2f}-{interval.high:.2f}] against minSpeedup "
        f"{selection.min_speedup:g}x, but {noise_problem(best, selection.min_speedup)}; "
        "keeping the baseline until a quieter measurement (kiln optimize --force, or "
        "benchmark.maxRounds/maxSeconds for more rounds)"
    )


def select(
    candidates: list[CandidateStatus], baseline: str | None, selection: Selection
) -> tuple[str | None, str]:
    fast, why_none = qualified(candidates, baseline, selection)
    if not fast:
        return None, why_none
    objective = selection.objective
    best, notes = simplest_that_pays(fast, objective, selection.prefer_simpler_within)
    fastest = max(fast, key=lambda c: _metric(c, objective))
    why = _objective_text(best, selection) if best is fastest else "the simpler engine"
    interval = best.speedup_interval
    around = f" [{interval.low:.2f}-{interval.high:.2f}]" if interval else ""
    reason = f"{why}, {best.speedup:.2f}x{around} over {baseline}, accuracy gate passed"
    return best.name, "; ".join([reason, *notes])


def _objective_text(best: CandidateStatus, selection: Selection) -> str:
    if selection.objective is Objective.MIN_LATENCY and best.latency_ms is not None:
        return f"lowest p50 latency ({best.latency_ms.p50:.3g} ms)"
    why = f"highest throughput ({best.throughput:.4g}/s)"
    if selection.objective is Objective.MAX_THROUGHPUT_UNDER_LATENCY:
        why += f" with p99 within {selection.latency_budget_ms:g} ms"
    return why


# The candidate fields that repeat one batch size's benchmark, under the same names.
_HEADLINE = (
    "batch_size",
    "lengths",
    "latency_ms",
    "throughput",
    "speedup",
    "speedup_interval",
    "disturbed",
    "noise_margin",
)


def at_decision_batch(candidate: CandidateStatus, batch: int) -> CandidateStatus:
    """The candidate's headline numbers (what selection compares and the table shows) are its
    measurements at the decision batch size; every batch size is measured, so a change of the
    decision batch only picks other stored numbers. None where it was not measured there."""
    found = candidate.measured_at(batch) if candidate.state is State.OK else None
    if found is None and candidate.batch_size is None:
        return candidate  # numbers recorded without per-batch benchmarks: nothing to pick from
    return candidate.model_copy(update={k: getattr(found, k, None) for k in _HEADLINE})


def reselect(result: TargetStatus, spec: OptimizedModelSpec) -> TargetStatus:
    """Apply the spec's selection and capacity settings to a result's stored measurements:
    the decision batch's headline numbers, the selection, the capacity plan. None of them is
    part of a result's key: a change of anything under `selection`, of throughput or price
    re-decides without measuring again."""
    if result.state is not State.OK:
        return result
    batch = spec.decision_batch_size()
    candidates = [at_decision_batch(c, batch) for c in result.candidates]
    chosen, why = select(candidates, result.baseline, spec.selection)
    decided = result.model_copy(
        update={"candidates": candidates, "selected": chosen, "selection_reason": why}
    )
    return decided.model_copy(update={"capacity": capacity(decided, spec)})


def _why_none(
    verified: list[CandidateStatus], servable: list[CandidateStatus], selection: Selection
) -> str:
    if not verified:
        return "no candidate passed its accuracy gate"
    if not servable:
        return (
            "no servable (ONNX Runtime, AOTInductor or TensorRT) candidate passed its accuracy gate"
        )
    best = max(servable, key=lambda c: c.speedup or 0.0)
    if (best.speedup or 0.0) < selection.min_speedup:
        return (
            f"no candidate reached minSpeedup {selection.min_speedup:g}x "
            f"(best: {best.name} at {best.speedup or 0.0:.2f}x)"
        )
    return f"no candidate met the p99 latency budget of {selection.latency_budget_ms:g} ms"
