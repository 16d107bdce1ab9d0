from __future__ import annotations

import asyncio
import threading

import numpy as np

from kiln.runtime.base import Array, Feeds
from kiln.serve.batching import Batcher, merge, split


def test_merge_and_split_are_inverse() -> None:
    parts = [{"x": np.full((n, 2), n, np.float32)} for n in (1, 3, 2)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 2)
    back = split([merged["x"]], [1, 3, 2])
    assert [b[0].tolist() for b in back] == [p["x"].tolist() for p in parts]


def test_concurrent_requests_are_batched_and_answered_exactly() -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def infer(feeds: Feeds) -> list[Array]:
        with lock:
            sizes.append(int(feeds["x"].shape[0]))
        return [feeds["x"] * 2 + 1]  # a per-sample function: batching must not change it

    async def scenario() -> list[list[Array]]:
        batcher = Batcher(infer, max_batch=4, window_s=0.05)
        batcher.start()
        requests = [{"x": np.full((1, 3), i, np.float32)} for i in range(10)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    for i, answer in enumerate(answers):
        assert answer[0].tolist() == [[2 * i + 1] * 3]
    assert sum(sizes) == 10
    assert max(sizes) <= 4
    assert len(sizes) < 10  # some requests did share a batch


def test_a_failing_batch_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls = {"n": 0}

    def infer(feeds: Feeds) -> list[Array]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return [feeds["x"]]

    async def scenario() -> tuple[BaseException | None, list[Array]]:
        batcher = Batcher(infer, max_batch=1, window_s=0.0)
        batcher.start()
        first: BaseException | None = None
        try:
            await batcher.submit({"x": np.zeros((1, 1), np.float32)})
        except RuntimeError as exc:
            first = exc
        second = await batcher.submit({"x": np.ones((1, 1), np.float32)})
        await batcher.stop()
        return first, second

    error, second = asyncio.run(scenario())
    assert str(error) == "device lost"
    assert second[0].tolist() == [[1.0]]


def test_with_no_window_a_lone_request_runs_at_once_and_a_queue_runs_as_one_batch() -> None:
    sizes: list[int] = []
    release = threading.Event()

    def infer(feeds: Feeds) -> list[Array]:
        sizes.append(int(feeds["x"].shape[0]))
        release.wait(5)  # the first batch holds the engine while the others queue
        return [feeds["x"] + 1]

    async def scenario() -> list[list[Array]]:
        batcher = Batcher(infer, max_batch=8, window_s=0.0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1), np.float32)}))
        while not sizes:  # the lone request runs without waiting for company
            await asyncio.sleep(0.001)
        rest = [
            asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), i, np.float32)}))
            for i in range(1, 6)
        ]
        await asyncio.sleep(0.05)  # all five queued while the engine is busy
        release.set()
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    assert [a[0].item() for a in answers] == [1, 2, 3, 4, 5, 6]
    assert sizes == [1, 5]  # what queued during the first batch ran as one, with no window
