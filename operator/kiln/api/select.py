"""Pick the candidate to serve (pure), used by the builder and, on stored results, by the
operator. Only verified, servable candidates that beat the
minimum speedup over the baseline qualify; the objective decides among them."""

from __future__ import annotations

from kiln.api.spec import Backend, Objective, Selection
from kiln.api.status import CandidateStatus, State, TargetStatus

# Only these can be loaded by `kiln serve`; torch.compile is measured for comparison.
SERVABLE = frozenset({Backend.ONNXRUNTIME, Backend.TENSORRT})


def select(
    candidates: list[CandidateStatus], baseline: str | None, selection: Selection
) -> tuple[str | None, str]:
    measured = [c for c in candidates if c.state is State.OK and c.throughput is not None]
    if not measured:
        return None, "no candidate was measured"
    verified = [c for c in measured if c.accuracy is not None and c.accuracy.passed]
    servable = [c for c in verified if c.backend in SERVABLE and c.name != baseline]
    fast = [c for c in servable if (c.speedup or 0.0) >= selection.min_speedup]
    if selection.objective is Objective.MAX_THROUGHPUT_UNDER_LATENCY:
        budget = selection.latency_budget_ms or 0.0
        fast = [c for c in fast if c.latency_ms is not None and c.latency_ms.p99 <= budget]
    if not fast:
        return None, _why_none(measured, verified, servable, selection)
    if selection.objective is Objective.MIN_LATENCY:
        best = min(fast, key=lambda c: c.latency_ms.p50 if c.latency_ms else float("inf"))
        why = f"lowest p50 latency ({best.latency_ms.p50:.3g} ms)" if best.latency_ms else ""
    else:
        best = max(fast, key=lambda c: c.throughput or 0.0)
        why = f"highest throughput ({best.throughput:.4g}/s)"
        if selection.objective is Objective.MAX_THROUGHPUT_UNDER_LATENCY:
            why += f" with p99 within {selection.latency_budget_ms:g} ms"
    return best.name, f"{why}, {best.speedup:.2f}x over {baseline}, accuracy gate passed"


def reselect(result: TargetStatus, selection: Selection) -> TargetStatus:
    """Apply `selection` to a result's stored measurements. Selection is not part of a
    result's key: a change of objective or minSpeedup re-decides without measuring again."""
    if result.state is not State.OK:
        return result
    chosen, why = select(result.candidates, result.baseline, selection)
    return result.model_copy(update={"selected": chosen, "selection_reason": why})


def _why_none(
    measured: list[CandidateStatus],
    verified: list[CandidateStatus],
    servable: list[CandidateStatus],
    selection: Selection,
) -> str:
    if not verified:
        return "no candidate passed its accuracy gate"
    if not servable:
        return "no servable (ONNX Runtime or TensorRT) candidate passed its accuracy gate"
    best = max(servable, key=lambda c: c.speedup or 0.0)
    if (best.speedup or 0.0) < selection.min_speedup:
        return (
            f"no candidate reached minSpeedup {selection.min_speedup:g}x "
            f"(best: {best.name} at {best.speedup or 0.0:.2f}x)"
        )
    return f"no candidate met the p99 latency budget of {selection.latency_budget_ms:g} ms"
