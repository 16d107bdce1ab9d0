"""Inputs bind to the forward's arguments by name, in any order the spec lists them; by position
only where the model has no names (TorchScript). One rule, `call_for`, says how a module is
called; `binding_problem` says which spec cannot be bound, naming the field."""

from __future__ import annotations

import pytest
import torch

from kiln.api.spec import Precision
from kiln.builder.aoti import export_program
from kiln.builder.torch_source import TorchModel, bind_inputs, binding_problem, forward_arguments
from kiln.runtime.binding import Argument, Call, call_for
from kiln.runtime.torch_runner import flatten_outputs
from tests.fixtures.specs import minimal_spec

X, SCALE = Argument("x"), Argument("scale")
SHIFT = Argument("shift", required=False)


def test_inputs_the_spec_lists_in_another_order_go_in_the_forwards_order() -> None:
    assert call_for([X, SCALE], ["x", "scale"]) == Call(("x", "scale"))
    assert call_for([X, SCALE], ["scale", "x"]) == Call(("x", "scale"))


def test_an_argument_left_to_its_default_sends_the_ones_after_it_by_keyword() -> None:
    assert call_for([X, SCALE, SHIFT], ["scale", "x"]) == Call(("x", "scale"))
    assert call_for([X, SHIFT, SCALE], ["scale", "x"]) == Call(("x",), ("scale",))
    keyword_only = Argument("scale", keyword_only=True)
    assert call_for([X, keyword_only], ["scale", "x"]) == Call(("x",), ("scale",))


def test_a_model_without_argument_names_takes_the_inputs_by_position_in_the_specs_order() -> None:
    assert call_for(None, ["scale", "x"]) == Call(("scale", "x"))


def test_a_name_the_forward_lacks_is_never_dropped_silently() -> None:
    with pytest.raises(ValueError, match=r"\['image'\] are not arguments"):
        call_for([X], ["image"])


def test_a_call_splits_values_by_name_and_flattens_positional_first() -> None:
    call = Call(("x",), ("scale",))
    assert call.order == ("x", "scale")
    assert call.split({"scale": 2, "x": 1}) == ((1,), {"scale": 2})
    assert call.apply(lambda x, scale: (x, scale), {"scale": 2, "x": 1}) == (1, 2)


def test_every_name_must_bind_and_every_argument_without_a_default_must_be_named() -> None:
    assert binding_problem(None, ["anything"]) is None  # no names: by position
    assert binding_problem([X, SCALE], ["scale", "x"]) is None  # any order
    assert binding_problem([X, SCALE, SHIFT], ["x", "scale"]) is None  # shift has a default
    assert binding_problem([X], ["image"]) == (
        "spec.inputs[0].name",
        "'image' is not an input of the model; its forward takes (x)",
    )
    assert binding_problem([X, SCALE, SHIFT], ["x"]) == (
        "spec.inputs",
        "no input for 'scale': the model's forward has no default for it; "
        "its forward takes (x, scale, shift)",
    )


class Scaled(torch.nn.Module):
    """Not symmetric in its two inputs of one shape: bound the wrong way round, the answers
    change and nothing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        y: torch.Tensor = self.linear(x * torch.sigmoid(scale))
        return y if shift is None else y + shift


class KeywordOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return x * scale


class VarArgs(torch.nn.Module):
    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return args[0]


def test_the_forwards_arguments_are_read_from_its_signature() -> None:
    assert forward_arguments(Scaled()) == [X, SCALE, SHIFT]
    assert forward_arguments(KeywordOnly()) == [X, Argument("scale", keyword_only=True)]
    assert forward_arguments(VarArgs()) is None


def test_a_program_traced_with_a_keyword_is_called_with_that_keyword() -> None:
    x, scale = torch.randn(2, 3), torch.randn(2, 3)
    model = Scaled().eval()
    program = torch.export.export(model, (x,), {"scale": scale}).module()
    # Its signature says (x, scale) either way; only its input tree says scale was a keyword.
    arguments = forward_arguments(program)
    assert arguments == [X, Argument("scale", keyword_only=True)]
    call = call_for(arguments, ["scale", "x"])
    assert call == Call(("x",), ("scale",))
    torch.testing.assert_close(call.apply(program, {"scale": scale, "x": x}), model(x, scale))


def test_a_torchscript_archive_is_bound_by_position_in_the_specs_order() -> None:
    spec = minimal_spec(
        source={"uri": "m.ts", "format": "torchscript"},
        inputs=[{"name": "scale", "shape": [-1, 3]}, {"name": "x", "shape": [-1, 3]}],
    )
    assert bind_inputs(Scaled(), spec) == Call(("scale", "x"))


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.FP16])
def test_a_package_program_takes_the_spec_order_and_binds_by_name(precision: Precision) -> None:
    spec = minimal_spec(
        inputs=[{"name": "scale", "shape": [-1, 3]}, {"name": "x", "shape": [-1, 3]}],
        precisions=["fp32", "fp16"],
    )
    module = Scaled().eval()
    model = TorchModel(module, bind_inputs(module, spec))
    program = export_program(model, spec, "cpu", precision).module()
    x, scale = torch.randn(3, 3), torch.randn(3, 3)
    expected = module(x=x, scale=scale)
    tolerance = 1e-2 if precision is Precision.FP16 else 1e-6
    (got,) = flatten_outputs(program(scale, x))  # FP16 returns a tuple
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)


def test_a_torchscript_argument_left_to_its_default_is_refused_with_the_signature() -> None:
    from kiln.builder.torch_source import scripted_problem
    from tests.fixtures.tiny_models import WithRate

    scripted = torch.jit.script(WithRate())
    assert scripted_problem(scripted, 2) is None
    field, message = scripted_problem(scripted, 1) or ("", "")
    assert field == "spec.inputs"
    assert message.startswith(
        "the TorchScript forward is (x: Tensor, sr: int=16000); leaving 'sr' to its default "
        "cannot be exported"
    )
    assert "'sr' is int, and inputs are tensors" in message
    assert scripted_problem(scripted, 3) == (
        "spec.inputs",
        "names 3 inputs but the forward takes (x: Tensor, sr: int=16000)",
    )
