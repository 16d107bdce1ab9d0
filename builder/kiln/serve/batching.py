"""Dynamic batching: requests that arrive within a short window are run as one batch (up to
the largest batch size the engine was built for) and the outputs are split back per request.
One worker thread owns the runner, so runners need not be thread-safe."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kiln.runtime.base import Array, Feeds

Infer = Callable[[Feeds], list[Array]]


@dataclass
class _Pending:
    feeds: Feeds
    size: int
    future: asyncio.Future[list[Array]]


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
    ) -> None:
        """`executor`: the one thread the runner lives on. Give the one that loaded and warmed
        it up: OpenMP keeps a thread team per calling thread, and a second team (the warm-up
        thread's) spinning beside the first slows every inference on a small machine."""
        self._infer = infer
        self.max_batch = max_batch
        self.window_s = window_s
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="kiln-infer"
        )
        self._task: asyncio.Task[None] | None = None
        self.on_batch: Callable[[int], None] = lambda size: None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, feeds: Feeds) -> list[Array]:
        size = int(next(iter(feeds.values())).shape[0])
        future: asyncio.Future[list[Array]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(feeds, size, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            group, total = [first], first.size
            deadline = loop.time() + self.window_s
            while total < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
                if total + item.size > self.max_batch:
                    carry = item  # starts the next batch
                    break
                group.append(item)
                total += item.size
            await self._execute(loop, group, total)

    async def _execute(
        self, loop: asyncio.AbstractEventLoop, group: list[_Pending], total: int
    ) -> None:
        self.on_batch(total)
        try:
            merged = merge([p.feeds for p in group]) if len(group) > 1 else group[0].feeds
            outputs = await loop.run_in_executor(self._executor, self._infer, merged)
            for pending, part in zip(group, split(outputs, [p.size for p in group]), strict=True):
                if not pending.future.done():
                    pending.future.set_result(part)
        except Exception as exc:  # every waiter learns why its batch failed
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
