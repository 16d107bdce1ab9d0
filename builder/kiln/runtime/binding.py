"""How a PyTorch module is called with named inputs: which go by position, in what order, and
which by keyword. One rule, `call_for`, decides it from the forward's arguments, so the check
stage, the reference outputs, both exporters and the runners all bind an input to the same
argument, whatever order the spec lists them in."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Argument:
    """One argument of a forward, as far as binding cares."""

    name: str
    required: bool = True  # no default: an input must name it
    keyword_only: bool = False  # cannot be passed by position


@dataclass(frozen=True)
class Call:
    """Pass the inputs named in `positional` by position, in that order, then those named in
    `keyword` by keyword. Names in `constants` are the spec's constants: the call passes
    their values itself (a Python int, or a 0-d tensor), so no caller ever supplies them."""

    positional: tuple[str, ...]
    keyword: tuple[str, ...] = ()
    constants: tuple[tuple[str, Any], ...] = ()

    @property
    def order(self) -> tuple[str, ...]:
        """Every input, in the order the call flattens them: an exported graph's input order."""
        fixed = {name for name, _ in self.constants}
        return tuple(n for n in self.positional + self.keyword if n not in fixed)

    def split(self, values: Mapping[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """(args, kwargs) for the call, from values by input name, constants included."""
        given = {**dict(self.constants), **values}
        return tuple(given[n] for n in self.positional), {n: given[n] for n in self.keyword}

    def converted(self, convert: Callable[[Any], Any]) -> Call:
        """The same call with each constant's value passed through `convert` (a tensor moved
        to the device the module runs on)."""
        return replace(self, constants=tuple((n, convert(v)) for n, v in self.constants))

    def apply(self, fn: Callable[..., Any], values: Mapping[str, Any]) -> Any:
        args, kwargs = self.split(values)
        return fn(*args, **kwargs)


def call_for(
    forward: Sequence[Argument] | None,
    names: Sequence[str],
    constants: Sequence[tuple[str, Any]] = (),
) -> Call:
    """How to call a forward with the inputs `names` (the spec's, in the spec's order).

    Without argument names (a TorchScript archive, whose names are the tracer's, or a forward
    of `*args`) the inputs go by position, in the order given. Otherwise each input binds to
    the argument of its name: the forward's leading arguments, as long as every one is given,
    go by position in the forward's order (the call a torch.export program was traced with,
    which its module insists on); from the first one left to its default, or the first
    keyword-only one, the rest go by keyword. `names` includes the constants' names; they
    bind like any input, and the call passes their values."""
    fixed = tuple(constants)
    if forward is None:
        return Call(tuple(names), constants=fixed)
    unknown = set(names) - {a.name for a in forward}
    if unknown:  # the check stage refuses these first, naming the spec's field
        raise ValueError(f"inputs {sorted(unknown)} are not arguments of the forward")
    positional: list[str] = []
    for argument in forward:
        if argument.name not in names or argument.keyword_only:
            break
        positional.append(argument.name)
    keyword = [a.name for a in forward if a.name in names and a.name not in positional]
    return Call(tuple(positional), tuple(keyword), fixed)
