"""Which of a model's outputs each name in `spec.outputs` is, and a module that returns exactly
those, in the spec's order.

A model returns a tensor, a tuple or list of them, a dict, a namedtuple, or a Hugging Face
`ModelOutput` (a dict). Keyed outputs bind **by key** (nested ones as `key.0`, `key.sub`): a
spec may list any subset in any order, and a name the model does not return is refused with the
names it does. Unkeyed outputs (a tensor, a tuple) bind by position and the spec names each
one. Every exporter, compiler and runner sees the model through `SpecOutputs`, so a tensor can
never be served under another tensor's name, and engines do not compute what nobody reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kiln.api.errors import KilnInputError

OutputPath = tuple[str | int, ...]  # keys (mappings) and indices (sequences) from the result down


@dataclass(frozen=True)
class Leaf:
    path: OutputPath
    name: str | None  # None where some step has no key (a tuple's position)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def leaves(result: Any, path: OutputPath = (), name: str | None = "") -> list[Leaf]:
    """Every tensor in `result`, in the model's order, with its path and dotted name."""

    def join(key: str) -> str | None:
        return None if name is None else (f"{name}.{key}" if name else key)

    if isinstance(result, torch.Tensor):
        return [Leaf(path, name or None)]
    if isinstance(result, Mapping):
        return [
            leaf for k, v in result.items() for leaf in leaves(v, (*path, str(k)), join(str(k)))
        ]
    if _is_namedtuple(result):
        return [
            leaf
            for i, (field, v) in enumerate(zip(result._fields, result, strict=True))
            for leaf in leaves(v, (*path, i), join(field))
        ]
    if isinstance(result, list | tuple):
        keyed = name is not None and name != ""  # a tuple under a key: `key.0`, `key.1`
        return [
            leaf
            for i, v in enumerate(result)
            for leaf in leaves(v, (*path, i), join(str(i)) if keyed else None)
        ]
    if result is None:  # an optional output the model did not produce
        return []
    raise TypeError(f"model returned {type(result).__name__}, expected tensors")


def keyed(result: Any) -> bool:
    return isinstance(result, Mapping) or _is_namedtuple(result)


def bind_outputs(result: Any, names: Sequence[str]) -> tuple[OutputPath, ...]:
    """The path of each spec output in `result`, in the spec's order; refused with the field
    and what the model returns where a name does not bind."""
    found = leaves(result)
    if keyed(result):
        by_name = {leaf.name: leaf.path for leaf in found if leaf.name is not None}
        returns = list(by_name)
        for i, name in enumerate(names):
            if name not in by_name:
                raise KilnInputError(
                    f"spec.outputs[{i}]",
                    f"{name!r} is not an output of the model; it returns {returns}",
                )
        return tuple(by_name[n] for n in names)
    if len(found) != len(names):
        raise KilnInputError(
            "spec.outputs",
            f"names {len(names)} outputs {list(names)} but the model returns {len(found)} "
            f"tensor(s) by position ({type(result).__name__}, no names to choose by)",
        )
    return tuple(leaf.path for leaf in found)


def pick(result: Any, path: OutputPath) -> torch.Tensor:
    value = result
    for step in path:
        value = value[step]
    assert isinstance(value, torch.Tensor)
    return value


def as_is(result: Any, paths: Sequence[OutputPath]) -> bool:
    """The model already returns exactly these outputs, flat and in this order (its own
    program can be compiled as it is)."""
    if isinstance(result, torch.Tensor):
        return list(paths) == [()]
    return (
        isinstance(result, list | tuple)
        and not keyed(result)
        and all(isinstance(v, torch.Tensor) for v in result)
        and list(paths) == [(i,) for i in range(len(result))]
    )


class SpecOutputs(torch.nn.Module):
    """Calls `module` as it is called and returns the tensors at `paths`, as a tuple.
    `returned`: the path of every tensor the module returns, in its order."""

    def __init__(
        self, module: Any, paths: Sequence[OutputPath], returned: Sequence[OutputPath] = ()
    ) -> None:
        super().__init__()
        self.module = module
        self.paths = tuple(paths)
        self.returned = tuple(returned)
        # Only ever run for inference; an exported program's module refuses .eval() itself.
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        result = self.module(*args, **kwargs)
        return tuple(pick(result, p) for p in self.paths)
