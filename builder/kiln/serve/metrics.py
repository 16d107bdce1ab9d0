"""Prometheus metrics of one server (own registry, so tests can run several in a process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kiln.serve.stats import BatchTimes, Statistics


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # Every answer of the protocol's endpoints, by protocol ("rest", "grpc") and code (the
        # HTTP status, or gRPC's status name), refusals and unknown routes included.
        self.requests = Counter(
            "kiln_requests", "Answered requests", ["protocol", "code"], registry=r
        )
        self.errors = Counter(
            "kiln_request_errors", "Failed inference requests", ["kind"], registry=r
        )
        self.latency = Histogram(
            "kiln_request_latency_seconds",
            "End-to-end inference latency",
            registry=r,
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10),
        )
        self.batch_size = Histogram(
            "kiln_batch_size",
            "Samples per executed batch",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )
        self.queue_depth = Gauge("kiln_queue_depth", "Requests waiting to be batched", registry=r)
        self.stats = Statistics()  # Triton's statistics extension (kiln.serve.stats)

    def executed(self, batch: BatchTimes) -> None:
        self.batch_size.observe(batch.size)
        self.stats.executed(batch)
