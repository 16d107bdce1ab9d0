"""The verdict a person acts on: what to serve, by how much, what it saves, and why each more
complex candidate was not chosen."""

from __future__ import annotations

from kiln.api.select import reselect
from kiln.api.spec import Backend, Precision, Selection
from kiln.api.status import Capacity, Interval, OptimizedModelStatus, Phase, State, TargetStatus
from kiln.api.verdict import verdict
from tests.fixtures.specs import minimal_spec
from tests.unit.test_report_and_summary import _cand


def status(*targets: TargetStatus) -> OptimizedModelStatus:
    return OptimizedModelStatus(phase=Phase.READY, targets=list(targets))


def cpu(selected: str | None, reason: str = "", capacity: Capacity | None = None) -> TargetStatus:
    int8 = _cand("onnxruntime-cpu-int8", Backend.ONNXRUNTIME, 1.7).model_copy(
        update={"precision": Precision.INT8}
    )
    bad = _cand("tensorrt-x", Backend.TENSORRT, 3.0, passed=False)
    fp32 = _cand("aotinductor-cpu-fp32", Backend.AOTINDUCTOR, 1.6).model_copy(
        update={"speedup_interval": Interval(low=1.5, high=1.7)}
    )
    return TargetStatus(
        name="cpu",
        device="cpu",
        state=State.OK,
        baseline="pytorch-cpu-fp32",
        selected=selected,
        selection_reason=reason,
        capacity=capacity,
        candidates=[_cand("pytorch-cpu-fp32", Backend.PYTORCH, 1.0), fp32, int8, bad],
    )


def test_what_is_served_by_how_much_and_why_not_the_others() -> None:
    lines = verdict(status(cpu("aotinductor-cpu-fp32")), Selection())
    assert lines == [
        "cpu: serve aotinductor-cpu-fp32: 1.60x [1.50-1.70] the throughput of "
        "pytorch-cpu-fp32 at batch 8",
        "cpu: not chosen: onnxruntime-cpu-int8 is 1.06x of it (intervals overlap; within "
        "preferSimplerWithin 0.1); tensorrt-x failed its accuracy gate",
    ]


def test_the_savings_where_prices_are_set() -> None:
    plan = Capacity(
        target_throughput=400,
        utilization=0.8,
        batch_size=8,
        baseline_replicas=13,
        selected_replicas=5,
        monthly_savings=584.0,
    )
    (head, _) = verdict(status(cpu("aotinductor-cpu-fp32", capacity=plan)), Selection())
    assert head.endswith("; 5 replicas instead of 13 for 400 samples/s, saving $584 a month")


def test_nothing_selected_says_keep_the_baseline_and_why() -> None:
    lines = verdict(
        status(cpu(None, "no candidate reached minSpeedup 9x (best: x); more")), Selection()
    )
    assert lines == ["cpu: keep pytorch-cpu-fp32: no candidate reached minSpeedup 9x (best: x)"]


def test_reselect_takes_headline_numbers_from_the_decision_batch() -> None:
    spec = minimal_spec(batchSizes=[8], selection={"minSpeedup": 1.0})
    stored = cpu(None).model_copy(
        update={
            "candidates": [c.model_copy(update={"throughput": None}) for c in cpu(None).candidates]
        }
    )
    decided = reselect(stored, spec)
    assert decided.selected == "aotinductor-cpu-fp32"  # from the batch-8 benchmarks
    assert {c.throughput for c in decided.candidates} == {100.0, 160.0, 170.0, 300.0}
