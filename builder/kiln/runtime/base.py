"""The runner interface shared by the benchmark, the accuracy check and the server.

A runner stages inputs once (on the device, for GPU runners) and then runs repeatedly, so the
benchmark times inference rather than host-to-device copies, the same for every backend.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy.typing as npt

Array = npt.NDArray[Any]
Feeds = dict[str, Array]


class Runner(Protocol):
    name: str
    device: str

    def prepare(self, feeds: Feeds) -> None:
        """Stage inputs for `run` (copy to the device, allocate outputs)."""

    def run(self) -> None:
        """Execute once on the staged inputs and wait for completion."""

    def outputs(self) -> list[Array]:
        """Host copies of the last run's outputs, in the spec's output order."""

    def close(self) -> None:
        """Release device memory and sessions."""


def infer(runner: Runner, feeds: Feeds) -> list[Array]:
    runner.prepare(feeds)
    runner.run()
    return runner.outputs()
