"""A module that keeps state between calls answers the same input differently each time: the
check stage refuses it, naming the source, before anything is exported or measured."""

from __future__ import annotations

import pytest
import torch

from kiln.api.errors import KilnInputError
from kiln.builder.torch_source import check_torch_signature
from tests.fixtures.specs import minimal_spec


class Running(torch.nn.Module):
    """A running sum held in the module, as a streaming model holds its recurrent state."""

    def __init__(self) -> None:
        super().__init__()
        self.total = torch.nn.Parameter(torch.zeros(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.total.add_(x.sum(0))
        return x + self.total


class Pure(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def test_a_module_that_keeps_state_between_calls_is_refused_at_the_check_stage() -> None:
    with pytest.raises(KilnInputError) as raised:
        check_torch_signature(Running().eval(), minimal_spec())
    assert raised.value.where == "spec.source"
    assert "answered the same input differently on a second call" in raised.value.message
    assert "takes its state as an input" in raised.value.message


def test_a_pure_module_passes() -> None:
    model = check_torch_signature(Pure().eval(), minimal_spec())
    assert model.call.order == ("x",)
