"""PyTorch eager and torch.compile runners (the baseline and what a user might pick instead)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from kiln.runtime.base import Array, Feeds
from kiln.runtime.binding import Call


def flatten_outputs(result: Any) -> list[torch.Tensor]:
    """Models return a tensor, a tuple/list of tensors, or a dict; order follows the model."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [t for v in result.values() for t in flatten_outputs(v)]
    if isinstance(result, list | tuple):
        return [t for v in result for t in flatten_outputs(v)]
    raise TypeError(f"model returned {type(result).__name__}, expected tensors")


class TorchRunner:
    """Calls `module` with the feeds as `call` binds them (by name where the forward has
    names; see kiln.runtime.binding)."""

    def __init__(
        self,
        name: str,
        module: Callable[..., Any],
        call: Call,
        device: str,
        compile_model: bool = False,
    ) -> None:
        self.name = name
        self.device = device
        # A tensor constant (spec.constants) lives where the module runs, like the inputs.
        self.call = call.converted(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v)
        self._fn: Callable[..., Any] = torch.compile(module) if compile_model else module
        self._args: tuple[torch.Tensor, ...] = ()
        self._kwargs: dict[str, torch.Tensor] = {}
        self._out: list[torch.Tensor] = []

    def prepare(self, feeds: Feeds) -> None:
        # Split once here, so a timed run costs the same whether inputs go by name or not.
        staged = {
            n: torch.from_numpy(np.asarray(feeds[n], order="C")).to(self.device)
            for n in self.call.order
        }
        self._args, self._kwargs = self.call.split(staged)

    def run(self) -> None:
        with torch.inference_mode():
            self._out = flatten_outputs(self._fn(*self._args, **self._kwargs))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def outputs(self) -> list[Array]:
        return [t.detach().float().cpu().numpy() for t in self._out]

    def close(self) -> None:
        self._args, self._kwargs, self._out = (), {}, []
