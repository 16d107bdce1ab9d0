"""Every bad input ends in one clear message naming the field or file, exit code 2 (3 for
storage that cannot be reached: transient, try again), and no artifact marked as built (no
manifest.json anywhere in the artifact store)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kiln.cli.main import app
from tests.conftest import TinyExample, free_port, tiny_spec, write_calibration

pytestmark = pytest.mark.slow


def fails_with(tiny: TinyExample, spec: dict[str, Any], *expected: str, code: int = 2) -> str:
    tiny.write_spec(spec)
    result = CliRunner().invoke(
        app,
        ["optimize", str(tiny.spec_path), "--output", str(tiny.root / "out"), "--quiet"],
        catch_exceptions=False,
    )
    # Libraries may warn on stderr too; the error itself is exactly one line of its own.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.exit_code == code, result.stderr
    assert len(errors) == 1, result.stderr
    message = result.stderr[result.stderr.index("error: ") :]  # with its indented details
    for text in expected:
        assert text in message, message
    assert tiny.manifests() == []
    return message


def test_missing_source(tiny: TinyExample) -> None:
    fails_with(
        tiny,
        tiny_spec(source={"uri": "nowhere.pt", "factory": "tiny_models:build"}),
        "spec.source.uri (",
        "nowhere.pt): no such file",
    )


def test_unreadable_source(tiny: TinyExample) -> None:
    (tiny.root / "broken.pt2").write_bytes(b"this is not a torch.export archive")
    fails_with(
        tiny,
        tiny_spec(source={"uri": "broken.pt2"}),
        "spec.source.uri (",
        "broken.pt2): cannot load as a torch.export program (torch.export.save):",
    )


def test_shape_that_does_not_match_the_model(tiny: TinyExample) -> None:
    spec = tiny_spec(
        inputs=[{"name": "image", "shape": [-1, 5, 16, 16]}], precisions=["fp32"], calibration=None
    )
    fails_with(tiny, spec, "spec.inputs: the model does not accept image[1, 5, 16, 16]:float32")


def test_dtype_that_does_not_match_the_model(tiny: TinyExample) -> None:
    spec = tiny_spec(
        inputs=[{"name": "image", "shape": [-1, 3, 16, 16], "dtype": "int64"}],
        precisions=["fp32"],
        calibration=None,
    )
    fails_with(tiny, spec, "spec.inputs: the model does not accept image[1, 3, 16, 16]:int64")


def test_more_output_names_than_the_model_returns(tiny: TinyExample) -> None:
    fails_with(
        tiny,
        tiny_spec(outputs=["logits", "extra"]),
        "spec.outputs: names 2 outputs ['logits', 'extra'] but the model returns 1 tensor(s)",
    )


def test_output_name_missing_from_an_onnx_model(tiny: TinyExample) -> None:
    from tests.fixtures.tiny_models import build

    torch.onnx.export(
        build().eval(),
        (torch.randn(2, 3, 16, 16),),
        str(tiny.root / "m.onnx"),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "b"}},
        dynamo=False,
    )
    fails_with(
        tiny,
        tiny_spec(source={"uri": "m.onnx"}, outputs=["probs"]),
        "spec.outputs[0]: 'probs' is not an output of the model; it has ['logits']",
    )
    fails_with(
        tiny,
        tiny_spec(
            source={"uri": "m.onnx"},
            calibration=None,
            precisions=["fp32"],
            inputs=[{"name": "img", "shape": [-1, 3, 16, 16]}],
        ),
        "spec.inputs[0].name: 'img' is not an input of the model; its inputs are ['image']",
    )


def test_corrupt_onnx_file(tiny: TinyExample) -> None:
    (tiny.root / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 10)
    fails_with(
        tiny, tiny_spec(source={"uri": "corrupt.onnx"}), "corrupt.onnx): not a valid ONNX model"
    )


def test_op_the_exporter_cannot_handle(tiny: TinyExample) -> None:
    spec = tiny_spec(
        source={"uri": "weights.pt", "factory": "tiny_models:build_not_exportable"},
        precisions=["fp32"],
    )
    fails_with(
        tiny,
        spec,
        "spec.source: the ONNX exporter cannot handle this model: ",
        "No ONNX function found for <OpOverload(op='aten._linalg_svd'",
    )


def test_calibration_with_fewer_samples_than_asked(tiny: TinyExample) -> None:
    fails_with(
        tiny,
        tiny_spec(calibration={"uri": "calibration", "samples": 64}),
        "spec.calibration.samples: asks for 64 samples but",
        "holds 32 in 2 shard(s)",
    )


def test_calibration_arrays_that_do_not_match_the_inputs(tiny: TinyExample) -> None:
    write_calibration(tiny.root / "small", 8, shards=1, image=np.zeros((8, 3, 8, 8), np.float32))
    fails_with(
        tiny,
        tiny_spec(calibration={"uri": "small", "samples": 8}),
        "spec.calibration.uri (",
        "shard-0.npz): array 'image' has shape [8, 3, 8, 8], "
        "expected ['N', 3, 16, 16] from spec.inputs[0].shape",
    )
    write_calibration(tiny.root / "named", 8, shards=1, img=np.zeros((8, 3, 16, 16), np.float32))
    fails_with(
        tiny,
        tiny_spec(calibration={"uri": "named", "samples": 8}),
        "no array named 'image' (spec.inputs[0]); it holds ['img']",
    )
    write_calibration(tiny.root / "typed", 8, shards=1, image=np.zeros((8, 3, 16, 16), np.float64))
    fails_with(
        tiny,
        tiny_spec(calibration={"uri": "typed", "samples": 8}),
        "has dtype float64, expected float32 from spec.inputs[0].dtype",
    )


def test_a_validation_set_that_does_not_match_the_inputs(tiny: TinyExample) -> None:
    write_calibration(tiny.root / "val", 8, shards=1, image=np.zeros((8, 3, 16), np.float32))
    fails_with(
        tiny,
        tiny_spec(accuracy={"samples": 4, "uri": "val"}),
        "spec.accuracy.uri (",
        "shard-0.npz): array 'image' has shape [8, 3, 16], "
        "expected ['N', 3, 16, 16] from spec.inputs[0].shape",
    )
    fails_with(
        tiny,
        tiny_spec(accuracy={"samples": 4, "uri": "no-such-folder"}),
        "spec.accuracy.uri (",
    )


def test_a_holdout_that_leaves_too_little_to_calibrate_on(tiny: TinyExample) -> None:
    fails_with(
        tiny,
        tiny_spec(accuracy={"samples": 25}),
        "spec.accuracy.holdout: holding out 25 of the 32 calibration samples leaves 7 to "
        "calibrate on, under half of calibration.samples (16)",
    )


def test_unreachable_storage_endpoint(tiny: TinyExample, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    fails_with(
        tiny,
        tiny_spec(source={"uri": "s3://models/tiny/weights.pt", "factory": "tiny_models:build"}),
        "spec.source.uri (s3://models/tiny/weights.pt): cannot reach the S3 endpoint " + endpoint,
        code=3,  # an outage, not bad input: retried by a Job, never a failed resource
    )


def test_invalid_spec_file(tiny: TinyExample) -> None:
    message = fails_with(tiny, tiny_spec(batchSizes=[0, 2]), "spec.yaml: spec.batchSizes[0]: ")
    assert message.count("\n") == 1  # one line for the one problem


def test_each_spec_problem_is_one_line_naming_file_and_field(tiny: TinyExample) -> None:
    tiny.write_spec(tiny_spec(batchSizes=[0, 2], outputs=[]))
    result = CliRunner().invoke(app, ["optimize", str(tiny.spec_path), "--quiet"])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert all(line.startswith(f"error: {tiny.spec_path}: spec.") for line in lines), lines


PAYLOADS = {
    "a torch.export archive (the model, not the spec)": None,  # filled from the example below
    "random bytes": bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    "a PNG header": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    "UTF-16 text": "apiVersion: kiln.dev/v1alpha1\n".encode("utf-16"),
    "NUL bytes in UTF-8": b"apiVersion: kiln.dev/v1alpha1\x00\nkind: OptimizedModel\n",
    "an empty file": b"",
    "a YAML list": b"- 1\n- 2\n",
    "a scalar": b"hello",
    "broken YAML": b"spec:\n  inputs: [\n\t- bad",
    "deep nesting": b"[" * 50000 + b"]" * 50000,
    "two documents": b"a: 1\n---\nb: 2\n",
    "a tab-indented document": b"spec:\n\tsource: x\n",
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_any_file_passed_as_the_spec_is_one_error_line(tiny: TinyExample, kind: str) -> None:
    path = tiny.root / "not-a-spec"
    payload = PAYLOADS[kind]
    if payload is None:
        torch.export.save(
            torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), str(path)
        )
    else:
        path.write_bytes(payload)
    result = CliRunner().invoke(app, ["optimize", str(path), "-q", "-o", str(tiny.root / "out")])
    assert result.exit_code == 2, (kind, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, (kind, result.stderr)
    assert lines[0].startswith(f"error: {path}"), (kind, lines)


def test_a_folder_or_a_huge_file_as_the_spec(tiny: TinyExample) -> None:
    huge = tiny.root / "huge.yaml"
    huge.write_bytes(b"#" * (5 << 20))
    for path, expected in ((tiny.root, "not a regular file"), (huge, "too large")):
        result = CliRunner().invoke(app, ["optimize", str(path), "-q"])
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: {path}: ")
        assert expected in result.stderr


def test_an_input_name_the_model_does_not_have(tiny: TinyExample) -> None:
    spec = tiny_spec(
        inputs=[{"name": "x", "shape": [-1, 3, 16, 16]}],
        precisions=["fp32"],
        calibration=None,
    )
    message = fails_with(tiny, spec, "spec.inputs[0].name: 'x' is not an input of the model")
    assert "its forward takes (image)" in message


def test_an_argument_without_a_default_that_no_input_names(tiny: TinyExample) -> None:
    # Scaled.forward(self, x, scale, shift=0.0): shift may be left out, scale may not.
    spec = tiny_spec(
        source={"uri": "weights.pt", "factory": "tiny_models:build_scaled"},
        inputs=[{"name": "x", "shape": [-1, 3, 16, 16]}],
        precisions=["fp32"],
        calibration=None,
    )
    fails_with(
        tiny,
        spec,
        "error: spec.inputs: no input for 'scale': the model's forward has no default for it; "
        "its forward takes (x, scale, shift)",
    )


def test_a_batch_size_the_exported_program_cannot_take(tiny: TinyExample) -> None:
    from tests.fixtures.tiny_models import build

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        build().eval(), (torch.zeros(2, 3, 16, 16),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(tiny.root / "capped.pt2"))
    spec = tiny_spec(
        source={"uri": "capped.pt2"}, batchSizes=[1, 128], precisions=["fp32"], calibration=None
    )
    fails_with(tiny, spec, "spec.batchSizes: the model does not accept batch size 128")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--kubeconfig", "/nonexistent/kubeconfig"], "/nonexistent/kubeconfig: not a usable"),
        ([], "--kubeconfig: no cluster credentials: not in a pod"),
    ],
)
def test_an_operator_with_no_cluster_to_talk_to_says_so_in_one_line(
    args: list[str], expected: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Outside a pod, with no kubeconfig anywhere: the operator image started by hand, say.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    # the client library reads ~/.kube/config's location once, when first imported
    from kubernetes.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    result = CliRunner().invoke(app, ["operator", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith(f"error: {expected}"), line
