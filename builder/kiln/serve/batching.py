"""Dynamic batching: the moment the engine is free, every request queued meanwhile runs as one
batch (up to the largest batch size the engine was built for), and the outputs are split back
per request. So a lone request on an idle engine runs at once, and under load batches grow by
themselves with the requests that arrive while the engine runs, as Triton's dynamic batcher
does with its default `max_queue_delay` of 0. A window above 0 also waits up to that long for
more requests to fill a batch: throughput traded for latency, where batching pays (GPUs).
One worker thread owns the runner, so runners need not be thread-safe.

Only requests of one shape share a batch: equal on every axis but the batch axis (inputs with
dynamic axes, a sequence say, may differ from request to request). A request of another shape
closes the batch being gathered and starts the next, so requests still run in arrival order,
as Triton's dynamic batcher does. Shorter requests are never padded to join a longer one:
padding changes a model's answers unless the model masks the padding out, and Kiln cannot
know whether it does."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kiln.runtime.base import Array, Feeds
from kiln.serve.stats import BatchTimes

Infer = Callable[[Feeds], list[Array]]


# What requests must share to be batched: each input's name and shape beyond the batch axis.
ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


def shape_key(feeds: Feeds) -> ShapeKey:
    return tuple((name, tuple(array.shape[1:])) for name, array in feeds.items())


@dataclass
class _Pending:
    feeds: Feeds
    size: int
    future: asyncio.Future[list[Array]]
    key: ShapeKey
    queued_ns: int = field(default_factory=time.perf_counter_ns)


def merge(items: list[Feeds]) -> Feeds:
    return {name: np.concatenate([f[name] for f in items], axis=0) for name in items[0]}


def split(outputs: list[Array], sizes: list[int]) -> list[list[Array]]:
    """Per-request outputs, in order, from outputs of the merged batch."""
    bounds = np.cumsum([0, *sizes])
    return [[out[bounds[i] : bounds[i + 1]] for out in outputs] for i in range(len(sizes))]


class Batcher:
    def __init__(
        self,
        infer: Infer,
        max_batch: int,
        window_s: float,
        executor: concurrent.futures.ThreadPoolExecutor | None = None,
        merges: bool = True,
    ) -> None:
        """`executor`: the one thread the runner lives on. Give the one that loaded and warmed
        it up: OpenMP keeps a thread team per calling thread, and a second team (the warm-up
        thread's) spinning beside the first slows every inference on a small machine."""
        self._infer = infer
        # False: each request runs alone (an input batched on another axis than 0, or with
        # no batch axis: requests would not concatenate, nor outputs split, on axis 0).
        self.merges = merges
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="kiln-infer"
        )
        self._task: asyncio.Task[None] | None = None
        self.on_batch: Callable[[BatchTimes], None] = lambda batch: None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, feeds: Feeds, size: int | None = None) -> list[Array]:
        """The outputs for `feeds`, a request of `size` samples (default: axis 0's length)."""
        if size is None:
            size = int(next(iter(feeds.values())).shape[0])
        future: asyncio.Future[list[Array]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(feeds, size, future, shape_key(feeds)))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            group, carry = await self._gather(loop, first)
            await self._execute(loop, group)

    async def _gather(
        self, loop: asyncio.AbstractEventLoop, first: _Pending
    ) -> tuple[list[_Pending], _Pending | None]:
        """`first` and what joins it: everything queued now, then (window > 0) what arrives
        within the window, until the batch is full or a request of another shape comes;
        returns the batch and the request that starts the next one."""
        group, total = [first], first.size
        if not self.merges:
            return group, None
        deadline = loop.time() + self.window_s
        while total < self.max_batch:
            if not self._queue.empty():
                item = self._queue.get_nowait()  # waited already, while the engine ran
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item.key != first.key or total + item.size > self.max_batch:
                return group, item  # starts the next batch: never reordered, never padded
            group.append(item)
            total += item.size
        return group, None

    async def _execute(self, loop: asyncio.AbstractEventLoop, group: list[_Pending]) -> None:
        started = time.perf_counter_ns()
        try:
            parts, timed = await loop.run_in_executor(self._executor, self._run_batch, group)
            self.on_batch(
                BatchTimes(
                    sum(p.size for p in group),
                    len(group),
                    [started - p.queued_ns for p in group],
                    *timed,
                )
            )
            for pending, part in zip(group, parts, strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)
        except Exception as exc:  # every waiter learns why its batch failed
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)

    def _run_batch(self, group: list[_Pending]) -> tuple[list[list[Array]], tuple[int, int, int]]:
        """On the runner's thread: merge, infer, split, each timed there (no hand-off in it)."""
        t0 = time.perf_counter_ns()
        merged = merge([p.feeds for p in group]) if len(group) > 1 else group[0].feeds
        t1 = time.perf_counter_ns()
        outputs = self._infer(merged)
        t2 = time.perf_counter_ns()
        parts = split(outputs, [p.size for p in group])
        return parts, (t1 - t0, t2 - t1, time.perf_counter_ns() - t2)
