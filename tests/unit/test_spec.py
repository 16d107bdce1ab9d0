from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kiln.api.errors import KilnInputError
from kiln.api.load import load_file, parse_document
from kiln.api.spec import Objective, Precision, Quantizer, SourceFormat

EXAMPLE = Path(__file__).parents[2] / "examples" / "lipsync" / "optimizedmodel.yaml"


def doc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": {"uri": "s3://models/m.onnx"},
        "inputs": [{"name": "x", "shape": [-1, 3]}],
        "outputs": ["y"],
        "precisions": ["fp32"],
    }
    base.update(spec)
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "OptimizedModel",
        "metadata": {"name": "m"},
        "spec": base,
    }


def error_of(document: dict[str, Any]) -> str:
    with pytest.raises(KilnInputError) as info:
        parse_document(document, "spec.yaml")
    return str(info.value)


def test_example_loads_with_defaults() -> None:
    model = load_file(EXAMPLE)
    spec = model.spec
    assert model.metadata.name == "lipsync"
    assert [t.name for t in spec.inputs] == ["image", "audio"]
    assert spec.inputs[0].shape == [-1, 6, 320, 320]
    assert spec.source.resolved_format() is SourceFormat.EXPORTED
    assert spec.calibration is not None
    assert spec.calibration.samples == 128
    assert spec.selection.objective is Objective.MAX_THROUGHPUT
    assert spec.decision_batch_size() == 8


def test_calibration_default_sample_count_is_512() -> None:
    model = parse_document(doc(precisions=["int8"], calibration={"uri": "s3://b/cal"}), "spec.yaml")
    assert model.spec.calibration is not None
    assert model.spec.calibration.samples == 512
    assert model.spec.calibration.method is None
    assert model.spec.calibration.quantizer_used() is Quantizer.NNCF
    assert model.spec.calibration.method_label() == "NNCF defaults"


@pytest.mark.parametrize(
    ("calibration", "quantizer", "label"),
    [
        ({}, Quantizer.NNCF, "NNCF defaults"),
        ({"method": "minmax"}, Quantizer.NNCF, "minmax"),
        ({"method": "percentile"}, Quantizer.NNCF, "percentile"),
        # Only ONNX Runtime has the entropy calibrator: naming it picks that quantizer, so a
        # spec written before NNCF was Kiln's default means what it meant.
        ({"method": "entropy"}, Quantizer.ONNXRUNTIME, "entropy"),
        ({"quantizer": "onnxruntime"}, Quantizer.ONNXRUNTIME, "entropy"),
        ({"quantizer": "onnxruntime", "method": "minmax"}, Quantizer.ONNXRUNTIME, "minmax"),
    ],
)
def test_the_quantizer_follows_the_calibrator(
    calibration: dict[str, Any], quantizer: Quantizer, label: str
) -> None:
    cal = {"uri": "s3://b/cal", **calibration}
    model = parse_document(doc(precisions=["int8"], calibration=cal), "spec.yaml")
    assert model.spec.calibration is not None
    assert model.spec.calibration.quantizer_used() is quantizer
    assert model.spec.calibration.method_label() == label


def test_wire_form_is_camel_case_and_round_trips() -> None:
    model = load_file(EXAMPLE)
    wire = model.spec.to_wire()
    assert "batchSizes" in wire
    assert "int8MaxDegradation" in wire["accuracy"]
    assert parse_document(doc(**wire), "x").spec == model.spec


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"inputs": [{"name": "x", "shape": [3, -1]}]}, "spec.inputs[0].shape: axis 1 is -1"),
        ({"inputs": [{"name": "x", "shape": [-1, 0]}]}, "axis 1 is 0"),
        ({"inputs": [{"name": "x", "shape": [-1, 3], "dtype": "float99"}]}, "spec.inputs[0].dtype"),
        ({"outputs": []}, "spec.outputs"),
        ({"outputs": ["y", "y"]}, "'y' appears more than once"),
        ({"precisions": ["int8"]}, "spec.calibration: required when precisions includes int8"),
        ({"batchSizes": [0]}, "spec.batchSizes[0]"),
        (
            {"selection": {"objective": "maxThroughputUnderLatency"}},
            "spec.selection.latencyBudgetMs: required",
        ),
        ({"selection": {"batchSize": 7}}, "spec.selection.batchSize: 7 is not one of batchSizes"),
        (
            {"accuracy": {"perOutput": {"z": {"atol": 1}}}},
            "spec.accuracy.perOutput: ['z'] not among outputs",
        ),
        ({"source": {"uri": "model.bin"}}, "cannot infer the format"),
        ({"source": {"uri": "w.pt", "format": "factory"}}, "spec.source.factory: required"),
        ({"source": {"uri": "w.pt", "factory": "not a factory"}}, "expected 'module:function'"),
        ({"sourcee": {"uri": "x.onnx"}}, "spec.sourcee: Extra inputs are not permitted"),
        (
            {"inputs": [{"name": "x", "shape": [4, 3]}], "batchSizes": [1, 4]},
            "spec.inputs[0].shape: axis 0 is fixed at 4",
        ),
        ({"selection": {"preferSimplerWithin": 1.5}}, "spec.selection.preferSimplerWithin: Input"),
        ({"selection": {"preferSimplerWithin": -0.1}}, "spec.selection.preferSimplerWithin"),
        ({"cost": {"hourly": {"cpu": -1}}}, "spec.cost.hourly.cpu: Input should be greater"),
        (
            {"targets": {"cpu": False}, "cost": {"hourly": {"cpu": 1}}},
            "spec.cost.hourly: 'cpu' is not a target: targets.cpu is false",
        ),
        (
            {"targets": {"gpuTypes": ["NVIDIA-L4"]}, "cost": {"hourly": {"NVIDIA-A10G": 1}}},
            "spec.cost.hourly: 'NVIDIA-A10G' is not a target: expected 'cpu' or one of",
        ),
        ({"cost": {"hourly": {"no such/gpu": 1}}}, "'no such/gpu' is not a GPU type"),
        ({"serving": {"targetThroughput": 0}}, "spec.serving.targetThroughput: Input should be"),
        ({"serving": {"replicas": "auto"}}, "spec.serving.replicas: 'auto' needs"),
        ({"serving": {"replicas": "many"}}, "spec.serving.replicas"),
        ({"serving": {"utilization": 1.5}}, "spec.serving.utilization"),
        ({"benchmark": {"minRounds": 8, "maxRounds": 7}}, "spec.benchmark.maxRounds: must be"),
        (
            {"accuracy": {"uri": "s3://b/val", "holdout": 4}},
            "spec.accuracy.holdout: not used with uri (a validation set is held out already)",
        ),
        (
            {"accuracy": {"samples": 8, "holdout": 9}},
            "spec.accuracy.holdout: 9 is more than samples (8), the number the gates check",
        ),
        ({"accuracy": {"holdout": -1}}, "spec.accuracy.holdout: Input should be greater"),
        ({"accuracy": {"uri": ""}}, "spec.accuracy.uri: String should have at least 1"),
        (
            {"calibration": {"uri": "s3://b/c", "quantizer": "nncf", "method": "entropy"}},
            "spec.calibration.method: entropy is ONNX Runtime's calibrator, which NNCF does not",
        ),
        ({"calibration": {"uri": "s3://b/c", "quantizer": "ort"}}, "spec.calibration.quantizer"),
    ],
)
def test_bad_specs_name_the_field(change: dict[str, Any], expected: str) -> None:
    assert expected in error_of(doc(**change))


def test_wrong_kind_and_version_are_rejected() -> None:
    document = doc()
    document["kind"] = "Deployment"
    assert "kind: expected OptimizedModel, got 'Deployment'" in error_of(document)
    document = doc()
    document["apiVersion"] = "kiln.dev/v9"
    assert "apiVersion: expected kiln.dev/v1alpha1, got 'kiln.dev/v9'" in error_of(document)


def test_unreadable_and_multi_document_files(tmp_path: Path) -> None:
    with pytest.raises(KilnInputError, match="cannot read the spec file"):
        load_file(tmp_path / "missing.yaml")
    two = tmp_path / "two.yaml"
    two.write_text("a: 1\n---\nb: 2\n")
    with pytest.raises(KilnInputError, match="expected one YAML document, found 2"):
        load_file(two)
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(KilnInputError, match="not valid YAML"):
        load_file(bad)


def test_decision_batch_follows_objective() -> None:
    spec = parse_document(doc(batchSizes=[8, 1, 4]), "x").spec
    assert spec.batch_sizes == [1, 4, 8]
    assert spec.decision_batch_size() == 8
    latency = parse_document(doc(batchSizes=[1, 8], selection={"objective": "minLatency"}), "x")
    assert latency.spec.decision_batch_size() == 1
    assert Precision.FP32 in latency.spec.precisions


def test_capacity_fields_load() -> None:
    spec = parse_document(
        doc(
            serving={"replicas": "auto", "targetThroughput": 500, "utilization": 0.7},
            cost={"hourly": {"cpu": 0.2, "NVIDIA-H100-80GB-HBM3": 4.5}, "hoursPerMonth": 720},
        ),
        "x",
    ).spec
    assert spec.serving.replicas == "auto"
    assert spec.cost.hourly["cpu"] == 0.2
    assert spec.selection.prefer_simpler_within == 0.10


def test_grpc_and_rest_need_two_ports() -> None:
    from kiln.api.errors import InvalidSpecError
    from tests.fixtures.specs import minimal_spec

    assert minimal_spec().serving.grpc_port == 8081
    with pytest.raises(InvalidSpecError, match=r"serving\.grpcPort: 8080 is also the REST port"):
        minimal_spec(serving={"grpcPort": 8080})


def test_gates_hold_out_accuracy_samples_unless_told_otherwise() -> None:
    default = parse_document(doc(), "x").spec.accuracy
    assert default.uri is None
    assert default.held_out() == default.samples == 8
    assert parse_document(doc(accuracy={"holdout": 3}), "x").spec.accuracy.held_out() == 3
    assert parse_document(doc(accuracy={"holdout": 0}), "x").spec.accuracy.held_out() == 0
    # A validation set is held out already: nothing of the calibration set is withheld.
    validated = parse_document(doc(accuracy={"uri": "s3://b/val"}), "x").spec.accuracy
    assert validated.held_out() == 0
