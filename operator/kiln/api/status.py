"""The OptimizedModel status: what the builder reports and the operator writes.

`kiln optimize --output DIR` writes exactly this as DIR/status.json, so a local run and a
cluster run are read the same way.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kiln.api.base import KilnModel
from kiln.api.spec import Backend, Precision


class State(StrEnum):
    OK = "OK"
    SKIPPED = "SKIPPED"
    FAILED = "FAILED"
    PENDING = "PENDING"  # a target not measured yet: its builder Job is running


class TargetPhase(StrEnum):
    """Where one target stands; the resource's phase follows from these (kiln.api.phase)."""

    BUILDING = "Building"  # its builder Job is running (or about to start)
    RETRYING = "Retrying"  # its builder Job hit a transient error: another one is started
    FAILED = "Failed"  # the build or its Job failed
    SKIPPED = "Skipped"  # cannot run here (no such GPU, no runtime): nothing measured
    BUILT = "Built"  # measured; nothing selected (no candidate passed the gates)
    SELECTED = "Selected"  # a verified engine is selected (where a local run ends)
    ROLLING_OUT = "RollingOut"  # selected; its inference pods are not ready yet
    SERVING = "Serving"  # selected and served by ready pods
    STALE = "Stale"  # built before, but no node of this GPU type is left


class ConditionType(StrEnum):
    ACCEPTED = "Accepted"
    EXPORTED = "Exported"
    BUILT = "Built"
    BENCHMARKED = "Benchmarked"
    READY = "Ready"
    DEGRADED = "Degraded"


class Reason(StrEnum):
    """Every condition reason the operator writes (CamelCase, as Kubernetes conditions do)."""

    ACCEPTED = "Accepted"
    INVALID_SPEC = "InvalidSpec"  # a cross-field rule of Kiln's refused the spec
    INVALID_INPUT = "InvalidInput"  # the source or calibration set is missing or wrong
    NO_ARTIFACT_STORE = "NoArtifactStore"
    STORAGE_UNAVAILABLE = "StorageUnavailable"  # transient: retried
    EXPORTING = "Exporting"
    EXPORTED = "Exported"
    EXPORT_FAILED = "ExportFailed"
    BUILDING = "Building"
    BUILT = "Built"
    BENCHMARKED = "Benchmarked"
    NOTHING_MEASURED = "NothingMeasured"
    SERVING = "Serving"
    ROLLING_OUT = "RollingOut"
    NO_IMPROVEMENT = "NoImprovement"
    PROBLEMS = "Problems"  # several kinds of problem at once: the message lists them
    UNKNOWN_GPU_TYPE = "UnknownGPUType"
    BUILD_FAILED = "BuildFailed"
    TARGET_STALE = "TargetStale"
    AS_EXPECTED = "AsExpected"
    APPLY_FAILED = "ApplyFailed"  # the API server refused a write: retried with backoff


class Phase(StrEnum):
    PENDING = "Pending"
    EXPORTING = "Exporting"
    BUILDING = "Building"
    READY = "Ready"  # at least one target has a selected, verified candidate
    NO_IMPROVEMENT = "NoImprovement"  # everything ran, nothing beat the minimum speedup
    FAILED = "Failed"


class Latency(KilnModel):
    p50: float
    p90: float
    p99: float
    mean: float


class Interval(KilnModel):
    low: float
    high: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


def shape_text(batch: int | None, lengths: dict[str, int] | None) -> str:
    """A batch size and the lengths it was measured at, as tables and sentences show them:
    `4 (seq 16)`, or `4` where no axis beyond the batch is dynamic."""
    shown = ", ".join(f"{n} {v}" for n, v in (lengths or {}).items())
    return f"{batch} ({shown})" if shown else str(batch)


class BatchBenchmark(KilnModel):
    """One candidate at one batch size, measured in interleaved rounds with the baseline."""

    batch_size: int
    lengths: dict[str, int] | None = Field(
        default=None,
        description="the length of each dynamic axis beyond the batch (benchmark.shapes); "
        "the first shape measured at a batch size decides",
    )
    latency_ms: Latency
    throughput: float = Field(description="samples per second")
    speedup: float | None = Field(
        default=None,
        description="median over rounds of throughput / the baseline's in the same round",
    )
    speedup_interval: Interval | None = Field(
        default=None,
        description="95 % interval of the speedup (distribution-free, of the median ratio)",
    )
    spread_percent: float = Field(
        description="relative standard deviation of this candidate's window means, in percent"
    )
    rounds: int = Field(description="rounds measured; each holds one window of this candidate")
    iterations: int
    converged: bool = Field(
        description="the interval reached benchmark.intervalPercent before the caps"
    )
    disturbed: str | None = Field(
        default=None,
        description="why the numbers may not be clean (CPU pressure, a varying baseline)",
    )
    noise_margin: float | None = Field(
        default=None,
        description="where disturbed: how far the disturbance could have moved a speedup, "
        "(1 + the baseline's spread between rounds) / (1 - the CPU pressure share); the "
        "interval is divided by it before it may promote",
    )
    cpu_pressure_percent: float | None = Field(
        default=None,
        description="share of the rounds' time some task waited for a CPU (Linux PSI)",
    )


class OutputError(KilnModel):
    name: str
    max_abs_error: float
    relative_error: float = Field(description="|y - ref|_2 / |ref|_2")
    passed: bool


class AccuracyResult(KilnModel):
    passed: bool
    criterion: str = Field(description="the gate applied, in words")
    samples: int
    max_abs_error: float
    relative_error: float
    outputs: list[OutputError] = Field(default_factory=list)


class GateData(StrEnum):
    """Where the samples every accuracy gate of a target ran on came from."""

    VALIDATION = "validationSet"  # spec.accuracy.uri
    HELD_OUT = "heldOut"  # calibration samples the quantizer never saw
    IN_SAMPLE = "inSample"  # calibration samples the INT8 scales were fitted to (holdout 0)
    CALIBRATION = "calibrationSet"  # calibration samples, but nothing was calibrated (no INT8)
    NOISE = "noise"  # seeded random inputs: no calibration or validation set


class AccuracyGate(KilnModel):
    """What a target's accuracy gates ran on, and whether they could judge anything."""

    # A few short fields, no sample list: the status is written often.

    data: GateData
    samples: int
    source: str = Field(description="which samples, in words")
    warning: str | None = Field(
        default=None,
        description="a gate that cannot tell engines apart (reference outputs below its atol)",
    )


class CandidateStatus(KilnModel):
    name: str
    backend: Backend
    precision: Precision
    device: str
    state: State
    reason: str | None = None
    artifact: str | None = None
    cache_key: str | None = None
    cached: bool = Field(
        default=False,
        description="its numbers come from a stored result: nothing was built or measured now",
    )
    artifact_reused: bool = Field(
        default=False, description="its artifact was reused from storage (and measured now)"
    )
    build_seconds: float | None = None
    batch_size: int | None = Field(default=None, description="batch size of the headline numbers")
    lengths: dict[str, int] | None = Field(
        default=None, description="lengths of the dynamic axes of the headline numbers"
    )
    latency_ms: Latency | None = None
    throughput: float | None = None
    speedup: float | None = None
    speedup_interval: Interval | None = None
    disturbed: str | None = Field(
        default=None, description="the headline measurement may be disturbed, and why"
    )
    noise_margin: float | None = Field(
        default=None, description="the headline measurement's noise margin, where disturbed"
    )
    accuracy: AccuracyResult | None = None
    benchmarks: list[BatchBenchmark] = Field(default_factory=list)
    note: str | None = Field(
        default=None,
        description="how it was built, where that matters to its numbers (an INT8 model "
        "quantized in its matrix products only, say)",
    )

    def measured_at(self, batch: int) -> BatchBenchmark | None:
        """The measurement that decides at `batch`: the first shape measured there, which is
        the first of benchmark.shapes (the benchmark measures them in the order listed)."""
        return next((b for b in self.benchmarks if b.batch_size == batch), None)


class Environment(KilnModel):
    """What the numbers were measured on; part of every target's cache key."""

    device_type: str
    device_name: str
    torch: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    openvino: str | None = None
    nncf: str | None = None
    tensorrt: str | None = None
    cuda: str | None = None
    cpu_threads: int | None = Field(
        default=None, description="threads every runtime used (intra- and inter-op)"
    )
    threads_source: str | None = Field(
        default=None, description="where the thread count came from (quota, affinity, spec)"
    )
    schedulers: str | None = Field(
        default=None, description="CPU targets: how each runtime's threads are scheduled and wait"
    )
    builder: str


class Capacity(KilnModel):
    """Replicas and money to serve serving.targetThroughput on one target."""

    # From the throughput measured at the decision batch size, planned at serving.utilization.

    target_throughput: float
    utilization: float
    batch_size: int
    currency: str = "$"
    baseline_replicas: int | None = None
    selected_replicas: int | None = None
    hourly_price: float | None = None
    baseline_monthly_cost: float | None = None
    selected_monthly_cost: float | None = None
    monthly_savings: float | None = None
    build_cost: float | None = Field(
        default=None, description="the build's measured duration times the hourly price"
    )
    break_even_hours: float | None = Field(
        default=None, description="hours of serving until the savings pay for the build"
    )
    note: str | None = Field(default=None, description="why a number is missing")


class TargetStatus(KilnModel):
    name: str = Field(description="'cpu' or the GPU type (nvidia.com/gpu.product)")
    device: str = Field(description="'cpu' or 'cuda'")
    state: State
    phase: TargetPhase | None = Field(
        default=None, description="where the target stands (Building, Serving, Stale, ...)"
    )
    reason: str | None = None
    baseline: str | None = None
    selected: str | None = None
    selection_reason: str | None = None
    cache_key: str | None = None
    cached: bool = Field(default=False, description="the whole result was reused from storage")
    result: str | None = Field(default=None, description="URI of result.json")
    environment: Environment | None = None
    build_seconds: float | None = Field(
        default=None, description="wall time of this target's build, benchmark included"
    )
    capacity: Capacity | None = None
    accuracy_gate: AccuracyGate | None = None
    # Filled by the operator, not the builder.
    stale: bool = Field(default=False, description="no node of this GPU type is left")
    job: str | None = Field(default=None, description="the builder Job of this target")
    deployment: str | None = None
    ready_replicas: int | None = None
    endpoint: str | None = Field(default=None, description="Open Inference Protocol base URL")
    candidates: list[CandidateStatus] = Field(default_factory=list)

    def candidate(self, name: str) -> CandidateStatus | None:
        return next((c for c in self.candidates if c.name == name), None)


class Condition(KilnModel):
    type: str
    status: str
    reason: str
    message: str
    observed_generation: int | None = None
    last_transition_time: str | None = None


class OptimizedModelStatus(KilnModel):
    phase: Phase
    observed_generation: int | None = None
    message: str | None = None
    model_digest: str | None = None
    onnx_artifact: str | None = None
    quantized_artifact: str | None = None
    summary: str | None = None
    # Headline fields for `kubectl get` printer columns.
    best: str | None = Field(
        default=None, description="selected candidate@target with the best speedup"
    )
    best_speedup: str | None = Field(default=None, description="its speedup, e.g. 2.18x")
    ready_targets: str | None = Field(
        default=None,
        description="targets with a selection / targets that can run here, and how many were "
        "skipped (no such device, no runtime): `1/1 (1 skipped)`",
    )
    cheapest_target: str | None = Field(
        default=None, description="the target that meets serving.targetThroughput for least"
    )
    savings: str | None = Field(
        default=None, description="monthly savings on the cheapest target, e.g. $864/mo"
    )
    targets: list[TargetStatus] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
