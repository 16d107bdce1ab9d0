from __future__ import annotations

import math
from typing import Any

import pytest

from kiln.api.capacity import break_even_hours, monthly_cost, replicas_needed
from kiln.api.select import reselect
from kiln.api.spec import Backend, OptimizedModelSpec, Precision
from kiln.api.status import (
    AccuracyResult,
    BatchBenchmark,
    CandidateStatus,
    Interval,
    Latency,
    State,
    TargetStatus,
)
from kiln.operator.render import replicas
from tests.fixtures.specs import spec_of


@pytest.mark.parametrize(
    ("wanted", "per_replica", "utilization", "expected"),
    [
        (100, 50, 1.0, 2),
        (100, 50, 0.8, 3),  # 40/s usable each: 2.5 -> 3
        (100, 125, 0.8, 1),  # exactly 100/s usable: not short by one
        (1, 1000, 0.8, 1),  # never zero
        (864, 53.55, 0.8, 21),
    ],
)
def test_replicas_needed(
    wanted: float, per_replica: float, utilization: float, expected: int
) -> None:
    assert replicas_needed(wanted, per_replica, utilization) == expected


def test_money() -> None:
    assert monthly_cost(3, 0.5, 730) == 1095.0
    assert break_even_hours(build_cost=2.0, monthly_savings=730.0, hours_per_month=730) == 2.0
    assert math.isinf(break_even_hours(2.0, 0.0, 730))
    with pytest.raises(ValueError, match="per_replica"):
        replicas_needed(10, 0, 0.8)


def bench(batch: int, throughput: float, p99: float, speedup: float = 1.0) -> BatchBenchmark:
    return BatchBenchmark(
        batch_size=batch,
        latency_ms=Latency(p50=p99 / 2, p90=p99 * 0.9, p99=p99, mean=p99 / 2),
        throughput=throughput,
        speedup=speedup,
        speedup_interval=Interval(low=speedup * 0.98, high=speedup * 1.02),
        spread_percent=1.0,
        rounds=6,
        iterations=60,
        converged=True,
    )


def candidate(name: str, backend: Backend, throughput: float, p99: float) -> CandidateStatus:
    speedup = throughput / 50.0
    return CandidateStatus(
        name=name,
        backend=backend,
        precision=Precision.FP32,
        device="cpu",
        state=State.OK,
        batch_size=8,
        latency_ms=Latency(p50=p99 / 2, p90=p99, p99=p99, mean=p99 / 2),
        throughput=throughput,
        speedup=speedup,
        speedup_interval=Interval(low=speedup * 0.98, high=speedup * 1.02),
        accuracy=AccuracyResult(
            passed=True, criterion="c", samples=1, max_abs_error=0, relative_error=0
        ),
        benchmarks=[bench(8, throughput, p99, speedup)],
    )


def result() -> TargetStatus:
    return TargetStatus(
        name="cpu",
        device="cpu",
        state=State.OK,
        baseline="pytorch-cpu-fp32",
        build_seconds=360.0,
        candidates=[
            candidate("pytorch-cpu-fp32", Backend.PYTORCH, 50.0, 150.0),
            candidate("onnxruntime-cpu-fp32", Backend.ONNXRUNTIME, 100.0, 90.0),
        ],
    )


def spec(**changes: Any) -> OptimizedModelSpec:
    body: dict[str, Any] = {
        "source": {"uri": "s3://b/m.onnx"},
        "inputs": [{"name": "x", "shape": [-1, 3]}],
        "outputs": ["y"],
        "precisions": ["fp32"],
        "batchSizes": [8],
        **changes,
    }
    return spec_of(body)


def test_no_target_throughput_means_no_capacity_plan() -> None:
    decided = reselect(result(), spec())
    assert decided.selected == "onnxruntime-cpu-fp32"
    assert decided.capacity is None


def test_capacity_and_cost_of_the_baseline_and_the_selected_engine() -> None:
    decided = reselect(
        result(),
        spec(
            serving={"targetThroughput": 400, "replicas": "auto"},
            cost={"hourly": {"cpu": 0.5}},
        ),
    )
    plan = decided.capacity
    assert plan is not None
    assert (plan.baseline_replicas, plan.selected_replicas) == (10, 5)  # 40/s and 80/s usable
    assert plan.baseline_monthly_cost == 3650.0
    assert plan.selected_monthly_cost == 1825.0
    assert plan.monthly_savings == 1825.0
    assert plan.build_cost == pytest.approx(0.05)  # 6 minutes at $0.50/h
    assert plan.break_even_hours == pytest.approx(0.05 / (1825.0 / 730), abs=1e-3)
    assert plan.note is None
    assert (
        replicas(spec(serving={"targetThroughput": 400, "replicas": "auto"}).serving, decided) == 5
    )
    assert replicas(spec().serving, decided) == 1  # an explicit count stays as written


def test_missing_price_and_latency_budget_say_why() -> None:
    decided = reselect(
        result(),
        spec(
            serving={"targetThroughput": 400},
            cost={"hourly": {"NVIDIA-L4": 0.8}},
            selection={"objective": "maxThroughputUnderLatency", "latencyBudgetMs": 100},
        ),
    )
    plan = decided.capacity
    assert plan is not None
    assert plan.selected_replicas == 5
    assert plan.baseline_replicas is None  # its p99 of 150 ms is over the 100 ms budget
    assert plan.monthly_savings is None
    assert plan.note is not None
    assert "pytorch-cpu-fp32: p99 150 ms at batch 8 is over the latency budget" in plan.note
    assert "no price for cpu in cost.hourly" in plan.note
