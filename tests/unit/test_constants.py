"""Constants (`spec.constants`): arguments a model is always called with. The spec owns their
names and values; the binding owns their place in the call and their type (what the forward
declares), so no caller ever passes one and no exported graph takes one as an input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.api.spec import Constant, DType
from kiln.builder.constants import constant_value, declared_kinds
from kiln.builder.torch_source import bind_inputs
from kiln.runtime.binding import Argument, Call, call_for
from tests.fixtures.specs import minimal_spec


def test_a_call_passes_its_constants_and_its_order_is_the_inputs_alone() -> None:
    call = call_for([Argument("x"), Argument("sr")], ["x", "sr"], [("sr", 16000)])
    assert call == Call(("x", "sr"), (), (("sr", 16000),))
    assert call.order == ("x",)
    assert call.split({"x": "X"}) == (("X", 16000), {})


def test_a_constant_takes_the_type_the_forward_declares() -> None:
    rate = Constant(name="sr", value=16000)
    assert constant_value(rate, "int", "c") == 16000
    assert isinstance(constant_value(rate, "int", "c"), int)
    assert constant_value(rate, "float", "c") == 16000.0
    assert constant_value(Constant(name="on", value=1), "bool", "c") is True
    tensor = constant_value(rate, "Tensor", "c")
    assert tensor.dtype == torch.int64
    assert tensor.shape == ()
    half = constant_value(Constant(name="g", value=0.5, dtype=DType.FLOAT16), "", "c")
    assert half.dtype == torch.float16
    assert constant_value(Constant(name="g", value=0.5), "", "c") == 0.5  # undeclared: a number


@pytest.mark.parametrize(
    ("constant", "kind", "field", "said"),
    [
        (Constant(name="sr", value=0.5), "int", "c.value", "0.5 is not a whole number"),
        (Constant(name="on", value=2), "bool", "c.value", "2.0 is not 0 or 1"),
        (Constant(name="s", value=1), "str", "c.name", "the forward's 's' is str"),
    ],
)
def test_a_value_the_declared_type_cannot_hold_is_refused_by_field(
    constant: Constant, kind: str, field: str, said: str
) -> None:
    with pytest.raises(KilnInputError) as raised:
        constant_value(constant, kind, "c")
    assert raised.value.where == field
    assert said in raised.value.message


def test_a_constant_is_not_an_input_and_says_where_it_goes() -> None:
    with pytest.raises(InvalidSpecError, match=r"constants\[0\].name: 'x' is also an input"):
        minimal_spec(constants=[{"name": "x", "value": 1}])
    inputs: list[Any] = [{"name": "x", "shape": [-1, 3]}, {"name": "sr", "value": 16000}]
    with pytest.raises(
        InvalidSpecError, match=r"goes in constants: \[\{name: sr, value: 16000\}\]"
    ):
        minimal_spec(inputs=inputs)
    spec = minimal_spec(constants=[{"name": "sr", "value": 16000}])
    assert spec.to_wire()["constants"] == [{"name": "sr", "value": 16000}]
    assert "constants" not in minimal_spec().to_wire()  # an old spec keeps its form


class Rate(torch.nn.Module):
    def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
        return x * sr


def test_a_factory_forward_binds_a_constant_by_name_as_its_annotation_says() -> None:
    spec = minimal_spec(
        source={"uri": "w.pt", "factory": "m:build"}, constants=[{"name": "sr", "value": 2}]
    )
    call = bind_inputs(Rate(), spec)
    assert call.order == ("x",)
    assert call.apply(Rate(), {"x": torch.ones(1, 3)}).tolist() == [[2.0, 2.0, 2.0]]
    unknown = minimal_spec(
        source={"uri": "w.pt", "factory": "m:build"}, constants=[{"name": "rate", "value": 2}]
    )
    with pytest.raises(KilnInputError, match="'rate' is not an input of the model"):
        bind_inputs(Rate(), unknown)


class WithDefaults(torch.nn.Module):
    # The file's `from __future__ import annotations` makes every annotation a string.
    def forward(self, x: torch.Tensor, sr: int | None = None, on: bool | None = None) -> Any:
        return x


def test_an_optional_argument_is_declared_as_its_inner_type() -> None:
    kinds = declared_kinds(WithDefaults(), scripted=False)
    assert kinds == {"x": "Tensor", "sr": "int", "on": "bool"}
    assert declared_kinds(torch.nn.Identity(), scripted=False) == {"input": "Tensor"}
