from __future__ import annotations

import asyncio

import numpy as np

from kiln.runtime.base import Array, Feeds
from kiln.serve.batching import Batcher
from kiln.serve.stats import BatchTimes, Statistics, breakdown


def test_a_batch_counts_once_per_request_and_the_rest_is_overhead() -> None:
    stats = Statistics()
    assert breakdown(stats.model_stats("m", "v")["inference_stats"]) is None
    # Two requests in one batch of 3 samples: queued 1 ms and 3 ms, compute 2+10+1 ms.
    stats.executed(BatchTimes(3, 2, [1_000_000, 3_000_000], 2_000_000, 10_000_000, 1_000_000))
    stats.finished(20_000_000, ok=True)
    stats.finished(22_000_000, ok=True)
    wire = stats.model_stats("m", "v")
    assert (wire["inference_count"], wire["execution_count"]) == (3, 1)
    s = wire["inference_stats"]
    assert s["queue"] == {"count": 2, "ns": 4_000_000}
    assert s["compute_infer"] == {"count": 2, "ns": 20_000_000}
    assert wire["batch_stats"][0]["compute_infer"] == {"count": 1, "ns": 10_000_000}
    # per request: 21 ms in the server - (2 queue + 2 + 10 + 1 compute) = 6 ms of its own
    every = breakdown(s)
    assert every is not None
    assert every.overhead_ns / 1000 == 6000.0
    # Between two reads, only what happened in between counts.
    stats.executed(BatchTimes(1, 1, [0], 0, 4_000_000, 0))
    stats.finished(5_000_000, ok=True)
    later = breakdown(stats.model_stats("m", "v")["inference_stats"], s)
    assert later == type(every)(5_000_000, 4_000_000, 1_000_000)


def test_the_batcher_reports_queue_and_compute_times() -> None:
    seen: list[BatchTimes] = []

    def infer(feeds: Feeds) -> list[Array]:
        return [feeds["x"] * 2]

    async def scenario() -> None:
        batcher = Batcher(infer, max_batch=4, window_s=0.02)
        batcher.on_batch = seen.append
        batcher.start()
        requests = [{"x": np.full((1, 2), i, np.float32)} for i in range(3)]
        await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()

    asyncio.run(scenario())
    assert sum(b.size for b in seen) == 3
    assert sum(b.requests for b in seen) == 3
    for batch in seen:
        assert len(batch.queue_ns) == batch.requests
        assert all(q >= 0 for q in batch.queue_ns)
        assert batch.infer_ns > 0
