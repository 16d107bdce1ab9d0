"""Triton's statistics extension: where each request's time went, measured by the server.

Clients on the same machine as the server share its cores, so their latencies mix the server's
cost with their own. The server's own clock does not: per request the time from a complete
request body to a ready response (`success`), of which waiting in the batcher's queue (`queue`),
merging the batch (`compute_input`), the engine (`compute_infer`) and splitting its outputs
(`compute_output`). Whatever is left is the server's overhead (parsing, decoding, encoding,
dispatch): the figure perf_analyzer prints as "Server: Overhead". Served as Triton does, on
`GET /v2/models/{name}/stats` and gRPC `ModelStatistics`, so its clients read it unchanged."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count

    def wire(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchTimes:
    """One executed batch: its size and where its time went."""

    size: int
    requests: int
    queue_ns: list[int]  # per request in it: from submission to the batch's start
    input_ns: int
    infer_ns: int
    output_ns: int


@dataclass
class _PerBatchSize:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


class Statistics:
    """Thread-safe counters; a batch's compute times count once per request in it, as
    Triton's do, so every average is per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stages = {stage: Duration() for stage in STAGES}
        self._batches: dict[int, _PerBatchSize] = {}
        self.inference_count = 0  # samples
        self.execution_count = 0  # batches
        self.last_inference_ms = 0

    def executed(self, batch: BatchTimes) -> None:
        with self._lock:
            for waited in batch.queue_ns:
                self._stages["queue"].add(waited)
            self._stages["compute_input"].add(batch.input_ns, batch.requests)
            self._stages["compute_infer"].add(batch.infer_ns, batch.requests)
            self._stages["compute_output"].add(batch.output_ns, batch.requests)
            per = self._batches.setdefault(batch.size, _PerBatchSize())
            per.compute_input.add(batch.input_ns)
            per.compute_infer.add(batch.infer_ns)
            per.compute_output.add(batch.output_ns)
            self.inference_count += batch.size
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1000)

    def finished(self, ns: int, ok: bool) -> None:
        with self._lock:
            self._stages["success" if ok else "fail"].add(ns)

    def model_stats(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's `model_stats` list, in its JSON form."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {s: d.wire() for s, d in self._stages.items()},
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": per.compute_input.wire(),
                        "compute_infer": per.compute_infer.wire(),
                        "compute_output": per.compute_output.wire(),
                    }
                    for size, per in sorted(self._batches.items())
                ],
            }


COMPUTE = ("compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Breakdown:
    """Means per successful request, in ns: the server's time, of it the compute, and what is
    left besides queueing and compute, its overhead (perf_analyzer's "Server: Overhead")."""

    server_ns: float
    compute_ns: float
    overhead_ns: float


def breakdown(after: dict[str, Any], before: dict[str, Any] | None = None) -> Breakdown | None:
    """From an entry's `inference_stats`, or from what changed since the read `before`;
    None when no request succeeded in between."""

    def mean(stage: str) -> float:
        count = int(after[stage]["count"]) - (int(before[stage]["count"]) if before else 0)
        spent = int(after[stage]["ns"]) - (int(before[stage]["ns"]) if before else 0)
        return spent / count if count else 0.0

    succeeded = int(after["success"]["count"]) - (int(before["success"]["count"]) if before else 0)
    if not succeeded:
        return None
    server, compute = mean("success"), sum(mean(stage) for stage in COMPUTE)
    return Breakdown(server, compute, server - compute - mean("queue"))
