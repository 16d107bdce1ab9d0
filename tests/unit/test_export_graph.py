"""The exported graph's plumbing: outputs cut and renamed wherever they are read, and
torch.export's dynamic shapes in the form the traced call binds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper

from kiln.builder.export import call_shapes, keep_outputs
from kiln.builder.outputs import SpecOutputs
from kiln.builder.torch_source import TorchModel
from kiln.runtime.binding import Call


def test_an_output_another_node_reads_is_renamed_where_it_is_read_too(tmp_path: Path) -> None:
    # A traced BERT: the pooler reads the last hidden state, both are graph outputs.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    hidden = helper.make_tensor_value_info("kiln_output_0", TensorProto.FLOAT, [2])
    pooled = helper.make_tensor_value_info("kiln_output_1", TensorProto.FLOAT, [2])
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["kiln_output_0"]),
            helper.make_node("Neg", ["kiln_output_0"], ["kiln_output_1"]),
        ],
        "g",
        [x],
        [hidden, pooled],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    keep_outputs(path, ["kiln_output_1", "kiln_output_0"], ["pooler_output", "last_hidden_state"])
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(str(path))
    pooler, last = session.run(
        ["pooler_output", "last_hidden_state"], {"x": np.array([-1.0, 2.0], np.float32)}
    )
    assert pooler.tolist() == [0.0, -2.0]
    assert last.tolist() == [0.0, 2.0]


def test_a_program_traced_with_keywords_only_gets_no_positional_shapes() -> None:
    batch = torch.export.Dim("batch")
    by_name = {"input_ids": {0: batch}, "attention_mask": {0: batch}}
    module = SpecOutputs(torch.nn.Identity(), [()])
    keywords = TorchModel(module, Call((), ("input_ids", "attention_mask")))
    assert call_shapes(keywords, by_name) == {"kwargs": by_name}
    mixed = TorchModel(module, Call(("input_ids",), ("attention_mask",)))
    assert call_shapes(mixed, by_name) == {
        "args": ({0: batch},),
        "kwargs": {"attention_mask": {0: batch}},
    }
