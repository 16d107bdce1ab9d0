"""Outputs bind by key where the model has keys, by position where it has none, and the spec
refuses what cannot be told apart (kiln.builder.outputs, kiln.api.spec)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.api.spec import SourceFormat
from kiln.builder.export import keep_outputs
from kiln.builder.feeds import example_feeds, random_feeds
from kiln.builder.outputs import SpecOutputs, as_is, bind_outputs, leaves
from kiln.builder.torch_source import _first_line
from kiln.runtime.errors import with_warned_cause
from tests.fixtures.specs import minimal_spec

A, B, C = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)


class Pair(NamedTuple):
    logits: torch.Tensor
    hidden: torch.Tensor


def test_keyed_outputs_bind_by_key_in_the_spec_order_and_drop_the_rest() -> None:
    result = OrderedDict(last_hidden_state=A, pooler_output=B, attentions=C)
    paths = bind_outputs(result, ["pooler_output", "last_hidden_state"])
    picked = SpecOutputs(lambda: result, paths)()
    assert [t.item() for t in picked] == [1.0, 0.0]
    assert not as_is(result, paths)


def test_nested_and_namedtuple_outputs_have_dotted_names() -> None:
    result = {"logits": A, "hidden_states": (B, C), "past": None}
    assert [leaf.name for leaf in leaves(result)] == [
        "logits",
        "hidden_states.0",
        "hidden_states.1",
    ]
    paths = bind_outputs(result, ["hidden_states.1"])
    assert SpecOutputs(lambda: result, paths)()[0] is C
    assert bind_outputs(Pair(A, B), ["hidden"]) == ((1,),)


def test_a_name_the_model_does_not_return_names_the_field_and_what_it_returns() -> None:
    with pytest.raises(KilnInputError) as error:
        bind_outputs({"logits": A, "probs": B}, ["logits", "pooler_output"])
    assert str(error.value) == (
        "spec.outputs[1]: 'pooler_output' is not an output of the model; it returns "
        "['logits', 'probs']"
    )


def test_unkeyed_outputs_bind_by_position_and_must_all_be_named() -> None:
    assert bind_outputs((A, B), ["x", "y"]) == ((0,), (1,))
    assert as_is((A, B), ((0,), (1,)))
    assert as_is(A, bind_outputs(A, ["only"]))
    with pytest.raises(KilnInputError, match=r"names 1 outputs \['x'\] but the model returns 2"):
        bind_outputs((A, B), ["x"])


def test_an_output_named_like_an_input_is_refused_when_the_spec_loads() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec.outputs\[1\]: 'x' is also an input's name"):
        minimal_spec(outputs=["y", "x"])


def test_jit_is_torchscript_and_imports_are_module_paths() -> None:
    spec = minimal_spec(source={"uri": "vad.jit"})
    assert spec.source.resolved_format() is SourceFormat.TORCHSCRIPT
    with pytest.raises(InvalidSpecError, match=r"spec.source.imports: expected module paths"):
        minimal_spec(source={"uri": "m.pt2", "imports": ["transformers modeling"]})


def test_integer_inputs_take_the_declared_range_or_the_users_own_samples() -> None:
    ids: dict[str, Any] = {"name": "x", "shape": [-1, 8], "dtype": "int64", "range": [0, 1]}
    spec = minimal_spec(inputs=[ids])
    drawn = random_feeds(spec.inputs, 64, seed=0)["x"]
    assert set(np.unique(drawn)) == {0, 1}
    own = [{"x": np.full((1, 8), 7, np.int64)}, {"x": np.full((1, 8), 9, np.int64)}]
    stacked = example_feeds(spec.inputs, own, 3, seed=0)["x"]
    assert stacked[:, 0].tolist() == [7, 9, 7]
    with pytest.raises(InvalidSpecError, match=r"spec.inputs\[0\].range: only for integer"):
        minimal_spec(inputs=[{"name": "x", "shape": [-1, 3], "range": [0, 1]}])


def test_the_line_that_says_what_went_wrong() -> None:
    scripted = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript (most recent call last):\n  File ...\n"
        "builtins.ValueError: Supported sampling rates: [8000, 16000]\n"
    )
    assert _first_line(scripted) == "builtins.ValueError: Supported sampling rates: [8000, 16000]"
    warned = [
        "Ran into an error\nTraceback ...\nNotImplementedError: Deserializing a.B failed. Do X."
    ]
    said = with_warned_cause("Please check the warnings above for possible errors.", warned)
    assert said == "NotImplementedError: Deserializing a.B failed"


def test_an_exported_graph_is_cut_to_the_spec_outputs_in_the_spec_order(tmp_path: Path) -> None:
    """What the TorchScript path does after exporting every output an archive returns."""
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    outs = [helper.make_tensor_value_info(f"o{i}", TensorProto.FLOAT, [2]) for i in range(3)]
    nodes = [helper.make_node("Identity", ["x"], ["o0"])]
    nodes += [helper.make_node("Mul", ["x", "k"], ["o1"]), helper.make_node("Neg", ["x"], ["o2"])]
    k = helper.make_tensor("k", TensorProto.FLOAT, [1], [3.0])
    graph = helper.make_graph(nodes, "g", [x], outs, initializer=[k])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    keep_outputs(path, ["o2", "o1"], ["neg", "tripled"])
    session = onnxruntime.InferenceSession(str(path))
    assert [o.name for o in session.get_outputs()] == ["neg", "tripled"]
    neg, tripled = session.run(None, {"x": np.array([1.0, 2.0], np.float32)})
    assert neg.tolist() == [-1.0, -2.0]
    assert tripled.tolist() == [3.0, 6.0]
