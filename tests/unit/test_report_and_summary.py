from __future__ import annotations

from kiln.api.phase import results_phase as phase_of
from kiln.api.spec import Backend, Precision
from kiln.api.status import (
    AccuracyResult,
    BatchBenchmark,
    CandidateStatus,
    Capacity,
    Latency,
    OptimizedModelStatus,
    Phase,
    State,
    TargetStatus,
)
from kiln.api.summary import headline, resource_status, summary_of
from kiln.builder.report import render_html, render_markdown, rows

LAT = Latency(p50=5, p90=6, p99=7, mean=5.5)


def _cand(name: str, backend: Backend, speedup: float, passed: bool = True) -> CandidateStatus:
    bench = BatchBenchmark(
        batch_size=8,
        latency_ms=LAT,
        throughput=100 * speedup,
        speedup=speedup,
        spread_percent=1.5,
        rounds=6,
        iterations=80,
        converged=True,
    )
    return CandidateStatus(
        name=name,
        backend=backend,
        precision=Precision.FP32,
        device="cpu",
        state=State.OK,
        batch_size=8,
        latency_ms=LAT,
        throughput=100 * speedup,
        speedup=speedup,
        benchmarks=[bench],
        accuracy=AccuracyResult(
            passed=passed, criterion="c", samples=4, max_abs_error=0.1, relative_error=0.01
        ),
    )


def target(selected: str | None) -> TargetStatus:
    return TargetStatus(
        name="cpu",
        device="cpu",
        state=State.OK,
        baseline="pytorch-cpu-fp32",
        selected=selected,
        selection_reason="because",
        candidates=[
            _cand("pytorch-cpu-fp32", Backend.PYTORCH, 1.0),
            _cand("onnxruntime-cpu-fp32", Backend.ONNXRUNTIME, 1.6),
            _cand("onnxruntime-cpu-int8", Backend.ONNXRUNTIME, 2.5, passed=False),
            CandidateStatus(
                name="tensorrt-cuda-fp16",
                backend=Backend.TENSORRT,
                precision=Precision.FP16,
                device="cuda",
                state=State.SKIPPED,
                reason="no CUDA device",
            ),
        ],
    )


def test_phase_and_summary() -> None:
    ready = [target("onnxruntime-cpu-fp32")]
    assert phase_of(ready) is Phase.READY
    assert summary_of(ready) == "1.60x onnxruntime-cpu-fp32 on cpu (batch 8, vs pytorch-cpu-fp32)"
    assert headline(ready) == {
        "best": "onnxruntime-cpu-fp32@cpu",
        "best_speedup": "1.60x",
        "ready_targets": "1/1",
        "cheapest_target": None,
        "savings": None,
    }
    # A target that cannot run here is counted apart, not as one still to become ready.
    gpu = TargetStatus(name="NVIDIA-A10G", device="cuda", state=State.SKIPPED, reason="no CUDA")
    assert headline([*ready, gpu])["ready_targets"] == "1/1 (1 skipped)"
    assert headline([*ready, target(None)])["ready_targets"] == "1/2"
    shaky = target("onnxruntime-cpu-fp32")
    disturbed = shaky.model_copy(
        update={
            "candidates": [
                c.model_copy(update={"disturbed": "CPU pressure 52% of the time"})
                for c in shaky.candidates
            ]
        }
    )
    assert headline([disturbed])["best_speedup"] == "1.60x (disturbed)"
    assert summary_of([disturbed]).endswith(
        "; measurement disturbed: CPU pressure 52% of the time)"
    )
    none = [target(None)]
    assert phase_of(none) is Phase.NO_IMPROVEMENT
    assert summary_of(none) == "no candidate selected (cpu: because)"
    skipped = TargetStatus(name="cuda", device="cuda", state=State.SKIPPED, reason="no GPU")
    assert phase_of([skipped]) is Phase.FAILED


def test_reports_show_every_candidate_gate_and_reason() -> None:
    status = OptimizedModelStatus(
        phase=Phase.READY, summary="s", targets=[target("onnxruntime-cpu-fp32")]
    )
    table = rows(status)
    assert [r[1] for r in table] == ["pytorch", "onnxruntime", "onnxruntime", "tensorrt"]
    assert table[1][-1] == "*"
    assert table[0][-1] == "baseline"
    assert table[2][-2] == "FAIL"
    md = render_markdown("m", status)
    assert "| onnxruntime-cpu-int8 | 8 | 5 | 6 | 7 | 250 | 2.50x | - | 1.5 | 6 | yes | - |" in md
    assert "Capacity and cost" not in md  # no serving.targetThroughput: nothing changes
    assert "tensorrt-cuda-fp16@cpu: no CUDA device" in md
    page = render_html("m", status)
    assert page.count("<rect") == 3
    assert "#c62828" in page
    assert "<svg" in page


def test_capacity_shows_in_the_headline_and_reports() -> None:
    cheap = target("onnxruntime-cpu-fp32").model_copy(
        update={
            "capacity": Capacity(
                target_throughput=500,
                utilization=0.8,
                batch_size=8,
                baseline_replicas=7,
                selected_replicas=4,
                hourly_price=0.5,
                baseline_monthly_cost=2555.0,
                selected_monthly_cost=1460.0,
                monthly_savings=1095.0,
                build_cost=0.02,
                break_even_hours=0.01,
            )
        }
    )
    gpu = cheap.model_copy(
        update={
            "name": "nvidia-l4",
            "capacity": cheap.capacity.model_copy(  # type: ignore[union-attr]
                update={"selected_monthly_cost": 3000.0, "monthly_savings": 50.0}
            ),
        }
    )
    status = resource_status(Phase.READY, [gpu, cheap])
    assert status.cheapest_target == "cpu"
    assert status.savings == "$1,095/mo"
    md = render_markdown("m", status)
    assert "## Capacity and cost" in md
    assert "| cpu (cheapest) | onnxruntime-cpu-fp32 | 7 | 4 | $2,555 | $1,460 | $1,095 |" in md
    assert "Capacity and cost" in render_html("m", status)


def test_a_skipped_cuda_target_claims_no_measurement() -> None:
    from kiln.api.status import Environment

    env = Environment(device_type="cuda", device_name="cuda", builder="x")
    skipped = TargetStatus(
        name="cuda", device="cuda", state=State.SKIPPED, reason="no CUDA device", environment=env
    )
    status = OptimizedModelStatus(
        phase=Phase.READY, targets=[target("onnxruntime-cpu-fp32"), skipped]
    )
    report = render_markdown("m", status)
    assert "## Target cuda" in report
    assert "Measured on" not in report.split("## Target cuda")[1]


def test_a_cuda_target_without_a_gpu_is_not_named_after_the_cpu() -> None:
    from kiln.builder.environment import Capabilities, TargetPlan, environment
    from kiln.runtime.threads import ThreadBudget

    caps = Capabilities(cuda_device=None, cuda_reason="no CUDA device")
    env = environment(TargetPlan("NVIDIA-L4", "cuda", "absent"), caps, ThreadBudget(1, "test"))
    assert env.device_name == "NVIDIA-L4"
