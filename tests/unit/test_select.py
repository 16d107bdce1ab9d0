from __future__ import annotations

from typing import Any

from kiln.api.select import select
from kiln.api.spec import Backend, Objective, Precision, Selection
from kiln.api.status import AccuracyResult, CandidateStatus, Latency, State


def cand(
    name: str,
    backend: Backend,
    throughput: float,
    speedup: float,
    p99: float = 10.0,
    passed: bool = True,
    state: State = State.OK,
) -> CandidateStatus:
    acc = AccuracyResult(passed=passed, criterion="c", samples=1, max_abs_error=0, relative_error=0)
    return CandidateStatus(
        name=name,
        backend=backend,
        precision=Precision.FP32,
        device="cpu",
        state=state,
        throughput=throughput,
        speedup=speedup,
        accuracy=acc,
        latency_ms=Latency(p50=p99 / 2, p90=p99 * 0.9, p99=p99, mean=p99 / 2),
    )


BASE = cand("pytorch-cpu-fp32", Backend.PYTORCH, 10, 1.0)


def pick(cands: list[CandidateStatus], **selection: Any) -> tuple[str | None, str]:
    return select([BASE, *cands], BASE.name, Selection(**selection))


def test_max_throughput_picks_fastest_verified_servable() -> None:
    chosen, why = pick(
        [
            cand("ort", Backend.ONNXRUNTIME, 20, 2.0),
            cand("ort-int8", Backend.ONNXRUNTIME, 40, 4.0, passed=False),
            cand("compile", Backend.TORCH_COMPILE, 50, 5.0),
        ]
    )
    assert chosen == "ort"
    assert "2.00x over pytorch-cpu-fp32" in why


def test_min_speedup_blocks_promotion_with_reason() -> None:
    chosen, why = pick([cand("ort", Backend.ONNXRUNTIME, 11, 1.1)], min_speedup=1.2)
    assert chosen is None
    assert why == "no candidate reached minSpeedup 1.2x (best: ort at 1.10x)"


def test_latency_budget_and_min_latency() -> None:
    cands = [
        cand("fast-but-spiky", Backend.TENSORRT, 40, 4.0, p99=30),
        cand("steady", Backend.ONNXRUNTIME, 30, 3.0, p99=8),
    ]
    chosen, _ = pick(cands, objective=Objective.MAX_THROUGHPUT_UNDER_LATENCY, latency_budget_ms=10)
    assert chosen == "steady"
    chosen, _ = pick(cands, objective=Objective.MIN_LATENCY)
    assert chosen == "steady"
    chosen, why = pick(cands, objective=Objective.MAX_THROUGHPUT_UNDER_LATENCY, latency_budget_ms=1)
    assert chosen is None
    assert "latency budget of 1 ms" in why


def test_failed_gates_and_failed_builds_are_never_selected() -> None:
    chosen, why = pick(
        [
            cand("bad", Backend.ONNXRUNTIME, 90, 9.0, passed=False),
            cand("broken", Backend.TENSORRT, 99, 9.9, state=State.FAILED),
        ]
    )
    assert chosen is None
    assert why == "no servable (ONNX Runtime or TensorRT) candidate passed its accuracy gate"
