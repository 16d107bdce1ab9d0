"""Load a PyTorch source (TorchScript, torch.export program, factory + weights), bind the spec's
inputs to its forward's arguments (by name where it has names) and the spec's outputs to what it
returns (by key where it has keys: kiln.builder.outputs), and check that it accepts the inputs."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kiln.api.errors import KilnInputError
from kiln.api.spec import OptimizedModelSpec, SourceFormat
from kiln.builder.constants import constant_value, declared_kinds, schema_arguments
from kiln.builder.feeds import example_feeds
from kiln.builder.outputs import OutputPath, SpecOutputs, as_is, bind_outputs, leaves, pick
from kiln.runtime.base import Feeds
from kiln.runtime.binding import Argument, Call, call_for
from kiln.runtime.errors import load_exported

# A TorchScript interpreter error opens with this boilerplate and a TorchScript traceback; the
# cause (`ValueError: Supported sampling rates: [8000, 16000]`) is its last line.
_TORCHSCRIPT_TRACE = "The following operation failed in the TorchScript interpreter"


def _first_line(exc: BaseException) -> str:
    """The line of an error that says what went wrong."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return (lines[-1] if lines[0].startswith(_TORCHSCRIPT_TRACE) else lines[0])[:400]


_DESCRIBED = {
    SourceFormat.TORCHSCRIPT: "a TorchScript archive (torch.jit.save)",
    SourceFormat.EXPORTED: "a torch.export program (torch.export.save)",
    SourceFormat.FACTORY: "a state_dict for the factory's module",
    SourceFormat.ONNX: "an ONNX model",
}


def import_source_modules(modules: list[str]) -> None:
    """The modules a program needs imported before it loads (`spec.source.imports`): those
    that register its custom output types, e.g. `transformers.modeling_outputs`."""
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise KilnInputError(
                f"spec.source.imports[{i}]", f"cannot import {name!r}: {_first_line(exc)}"
            ) from None


def _unregistered_hint(text: str) -> str:
    """What to add to the spec when a program names an output type nobody registered."""
    marker = "Deserializing "
    if "not registered" not in text or marker not in text:
        return ""
    qualified = text.split(marker, 1)[1].split()[0]
    module = qualified.rpartition(".")[0]
    return f" (add `imports: [{module}]` to spec.source, the module that defines it)"


def load_torch_module(spec: OptimizedModelSpec, path: Path, base_dir: Path) -> Any:
    fmt = spec.source.resolved_format()
    where = "spec.source.uri"
    import_source_modules(spec.source.imports)
    try:
        if fmt is SourceFormat.TORCHSCRIPT:
            module: Any = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        elif fmt is SourceFormat.EXPORTED:
            module = load_exported(str(path)).module()
        elif fmt is SourceFormat.FACTORY:
            module = _from_factory(spec.source.factory or "", path, base_dir)
        else:
            raise ValueError(f"{fmt.value} sources have no PyTorch module")
    except KilnInputError:
        raise
    except Exception as exc:
        line = _first_line(exc)
        raise KilnInputError(
            f"{where} ({path})",
            f"cannot load as {_DESCRIBED[fmt]}: {line}{_unregistered_hint(line)}",
        ) from None
    if hasattr(module, "eval") and fmt is not SourceFormat.EXPORTED:
        module.eval()
    return module


def _from_factory(factory: str, weights: Path, base_dir: Path) -> Any:
    module_name, _, fn_name = factory.partition(":")
    # The factory's module is looked up next to the spec file first, then on sys.path.
    if str(base_dir) not in sys.path:
        sys.path.insert(0, str(base_dir))
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise KilnInputError("spec.source.factory", f"cannot import {factory!r}: {exc}") from None
    model = fn()
    if not isinstance(model, torch.nn.Module):
        raise KilnInputError(
            "spec.source.factory", f"{factory!r} returned {type(model).__name__}, not nn.Module"
        )
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise KilnInputError(
            f"spec.source.uri ({weights})",
            f"weights do not fit {factory!r}: {_first_line(exc)}",
        ) from None
    return model


@dataclass(frozen=True)
class TorchModel:
    """A PyTorch source's module and how it is called with the spec's inputs: the two travel
    together, so nothing calls the module any other way. After the check stage the module is
    behind `SpecOutputs`: it returns the spec's outputs, in the spec's order, as a tuple."""

    module: Any
    call: Call
    # The source's own module already returns the spec's outputs, flat and in order, so its
    # own program may be compiled as it is.
    own_outputs: bool = True
    # The user's own samples (calibration or validation set) that checks and exports call the
    # module with; empty: seeded random values over each input's declared range.
    examples: tuple[Feeds, ...] = ()

    def feeds(
        self, spec: OptimizedModelSpec, batch: int, seed: int, lengths: dict[str, int] | None
    ) -> Feeds:
        return example_feeds(spec.inputs, self.examples, batch, seed, lengths)


class SpecOrder(torch.nn.Module):
    """Takes the spec's inputs by position, in the spec's order, and calls `module` as `call`
    binds them (by name where the forward has names): the calling convention of every package,
    whatever order the forward declares its arguments in."""

    def __init__(self, module: Any, call: Call, names: list[str]) -> None:
        super().__init__()
        self.module = module
        self.call = call
        self.names = tuple(names)
        # Only ever run for inference. An exporter that puts the module in eval mode puts it
        # back in the mode it found after (`train(self.training)`, which recurses): left at
        # nn.Module's default, True, that would switch on every dropout of the model.
        self.training = False

    def forward(self, *args: torch.Tensor) -> Any:
        return self.call.apply(self.module, dict(zip(self.names, args, strict=True)))


def forward_arguments(module: Any) -> list[Argument] | None:
    """The forward's arguments (torch.export programs and factory modules keep their names),
    or None where it takes only *args."""
    try:
        parameters = inspect.signature(module.forward if hasattr(module, "forward") else module)
    except (TypeError, ValueError):
        return None
    traced_as_keywords = _traced_keywords(module)
    arguments = [
        Argument(
            p.name,
            required=p.default is p.empty,
            keyword_only=p.kind is p.KEYWORD_ONLY or p.name in traced_as_keywords,
        )
        for p in parameters.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.name != "self"
    ]
    return arguments or None


def _traced_keywords(module: Any) -> frozenset[str]:
    """The inputs a torch.export program was traced with as keywords. Its module accepts only
    the call it was traced with, and its signature does not say which inputs those were; the
    program's input tree spec ((args, kwargs)) does."""
    in_spec: Any = getattr(module, "_in_spec", None)  # set on a program's module only
    if in_spec is None:
        return frozenset()
    try:
        return frozenset(str(k) for k in in_spec.child(1).context)
    except (AttributeError, IndexError, TypeError, ValueError):  # another tree than (args, kwargs)
        return frozenset()


def binding_problem(forward: list[Argument] | None, spec: list[str]) -> tuple[str, str] | None:
    """(field, message) when the spec's input names cannot bind to the forward's arguments:
    a name the forward lacks, or an argument with no default that no input names. The order
    is free: inputs bind by name."""
    if forward is None:
        return None  # only *args: bound by position
    takes = ", ".join(a.name for a in forward)
    known = {a.name for a in forward}
    for i, name in enumerate(spec):
        if name not in known:
            return (
                f"spec.inputs[{i}].name",
                f"{name!r} is not an input of the model; its forward takes ({takes})",
            )
    missing = [a.name for a in forward if a.required and a.name not in spec]
    if missing:
        needs = ", ".join(repr(n) for n in missing)
        return (
            "spec.inputs",
            f"no input for {needs}: the model's forward has no default for "
            f"{'it' if len(missing) == 1 else 'them'}; its forward takes ({takes})",
        )
    return None


def scripted_problem(module: Any, given: int) -> tuple[str, str] | None:
    """(field, message) when a TorchScript archive is called with fewer or more inputs than
    its forward declares. An argument left to its default passes an eager call, but the
    TorchScript-based ONNX exporter passes every declared argument and fails on the missing
    one (`Expected Tensor but got InvalidTag`): refused here, with the signature."""
    schema = getattr(getattr(module, "forward", None), "schema", None)
    if schema is None:
        return None
    declared = list(schema.arguments)[1:]  # without self
    described = ", ".join(_argument_text(a) for a in declared)
    if given > len(declared):
        return "spec.inputs", f"names {given} inputs but the forward takes ({described})"
    left = declared[given:]
    if not left:
        return None
    untensored = [f"{a.name!r} is {a.type}" for a in left if str(a.type) != "Tensor"]
    fix = (
        f"{', '.join(untensored)}, and inputs are tensors: script a wrapper whose forward "
        "takes tensors only and fixes it"
        if untensored
        else "list it as an input"
    )
    return (
        "spec.inputs",
        f"the TorchScript forward is ({described}); leaving "
        f"{', '.join(repr(a.name) for a in left)} to its default cannot be exported (the "
        f"TorchScript-based ONNX exporter passes every declared argument): {fix}",
    )


def _argument_text(argument: Any) -> str:
    default = f"={argument.default_value}" if argument.has_default_value() else ""
    return f"{argument.name}: {argument.type}{default}"


def bind_inputs(module: Any, spec: OptimizedModelSpec) -> Call:
    """How `module` is called with the spec's inputs and constants; names that cannot bind
    are refused."""
    # TorchScript archives are bound by position (a traced archive's names are the tracer's).
    scripted = spec.source.resolved_format() is SourceFormat.TORCHSCRIPT
    forward = None if scripted else forward_arguments(module)
    names = [t.name for t in spec.inputs]
    if scripted and spec.constants:
        names = _scripted_order(module, spec)
    problem = scripted_problem(module, len(names)) if scripted else None
    problem = problem or binding_problem(forward, names + _constant_names(spec, scripted))
    if problem is not None:
        raise KilnInputError(*problem)
    if forward is None and not scripted and spec.constants:
        raise KilnInputError(
            "spec.constants", "the forward takes only *args; a constant binds by argument name"
        )
    kinds = declared_kinds(module, scripted)
    constants = [
        (c.name, constant_value(c, kinds.get(c.name, ""), f"spec.constants[{i}]"))
        for i, c in enumerate(spec.constants)
    ]
    if scripted:
        return call_for(None, names, constants)
    return call_for(forward, names + [c.name for c in spec.constants], constants)


def _constant_names(spec: OptimizedModelSpec, scripted: bool) -> list[str]:
    # A scripted archive's constants are already in its positional order.
    return [] if scripted else [c.name for c in spec.constants]


def _scripted_order(module: Any, spec: OptimizedModelSpec) -> list[str]:
    """A TorchScript forward's arguments by position: each constant at its own argument
    (a scripted forward keeps its argument names), the inputs in the spec's order in the
    others."""
    declared = schema_arguments(module)
    fixed = {c.name for c in spec.constants}
    for i, constant in enumerate(spec.constants):
        if constant.name not in {a.name for a in declared}:
            takes = ", ".join(_argument_text(a) for a in declared)
            raise KilnInputError(
                f"spec.constants[{i}].name",
                f"{constant.name!r} is not an argument of the TorchScript forward ({takes})",
            )
    inputs = iter(t.name for t in spec.inputs)
    order: list[str] = []
    for argument in declared:
        name = argument.name if argument.name in fixed else next(inputs, None)
        if name is None:
            break
        order.append(name)
    order.extend(inputs)  # more inputs than arguments: scripted_problem says so
    unplaced = sorted(fixed - set(order))
    if unplaced:
        raise KilnInputError(
            "spec.constants",
            f"{unplaced} cannot be passed: an argument before it has no input (TorchScript "
            "archives take their arguments by position)",
        )
    return order


def check_torch_signature(
    module: Any, spec: OptimizedModelSpec, examples: list[Feeds] | None = None
) -> TorchModel:
    """The spec's input names against the forward's, then one forward pass per batch size the
    spec lists, and at each end of the dynamic axes' ranges, on the user's own samples where
    there are any: wrong names, shapes, dtypes, batch sizes, ranges and output names surface
    here, before any export."""
    call = bind_inputs(module, spec)
    given = tuple(examples or ())
    raw = TorchModel(module, call, examples=given)
    result = _forward(raw, spec, spec.batch_sizes[0], {}, "spec.inputs")
    paths = bind_outputs(result, spec.outputs)
    _check_stateless(
        result, _forward(raw, spec, spec.batch_sizes[0], {}, "spec.inputs"), paths, spec
    )
    returned = [leaf.path for leaf in leaves(result)]
    selected = SpecOutputs(module, paths, returned)
    model = TorchModel(selected, call, as_is(result, paths), given)
    for batch in spec.batch_sizes[1:]:
        _forward(model, spec, batch, {}, "spec.batchSizes")
    dims = spec.dims()
    if dims:
        field = _range_field(spec)
        for end in ("min", "max"):
            lengths = {n: getattr(d, end) for n, d in dims.items()}
            _forward(model, spec, spec.batch_sizes[0], lengths, field)
    return model


def _check_stateless(
    first: Any, second: Any, paths: Sequence[OutputPath], spec: OptimizedModelSpec
) -> None:
    """The same input twice must give the same answer. A module that keeps state between
    calls (silero-vad's `.jit` holds its recurrent state and audio context inside) answers
    each call from what came before: no engine can serve it as a function of a request, and
    every gate would compare it with a moving reference."""
    for name, path in zip(spec.outputs, paths, strict=True):
        a, b = pick(first, path), pick(second, path)
        tolerance = spec.accuracy.per_output.get(name, spec.accuracy)
        if a.shape != b.shape or not torch.allclose(
            a.float(), b.float(), rtol=tolerance.rtol, atol=tolerance.atol, equal_nan=True
        ):
            raise KilnInputError(
                "spec.source",
                f"the model answered the same input differently on a second call (output "
                f"{name!r} changed): it keeps state between calls inside the module, which "
                "no engine can serve as a function of each request; use a form of the model "
                "that takes its state as an input and returns it as an output",
            )


def _range_field(spec: OptimizedModelSpec) -> str:
    """Where a range the model rejects is reported: the first input with a dynamic axis."""
    first = next(i for i, t in enumerate(spec.inputs) if t.dynamic)
    return f"spec.inputs[{first}].dynamic"


def _forward(
    model: TorchModel,
    spec: OptimizedModelSpec,
    batch: int,
    lengths: dict[str, int],
    field: str,
) -> Any:
    feeds = model.feeds(spec, batch, seed=0, lengths=lengths)
    tensors = {t.name: torch.from_numpy(feeds[t.name]) for t in spec.inputs}
    described = ", ".join(
        f"{t.name}{list(t.concrete_shape(batch, lengths))}:{t.dtype.value}" for t in spec.inputs
    )
    try:
        with torch.inference_mode():
            return model.call.apply(model.module, tensors)
    except Exception as exc:
        what = f"batch size {batch}" if field == "spec.batchSizes" else described
        raise KilnInputError(
            field, f"the model does not accept {what}: {_first_line(exc)}"
        ) from None
