"""The operator–builder contract owned by kiln.api: one request class and wire format, one
Job report, one error taxonomy with its exit codes, the rendered podFailurePolicy, the FP16
rule and the phase rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln.api.errors import (
    ErrorKind,
    ExitCode,
    InvalidSpecError,
    KilnError,
    KilnInputError,
    KilnTransientError,
    StorageUnavailableError,
)
from kiln.api.fp16 import wants_fp16
from kiln.api.load import parse_document
from kiln.api.phase import resource_phase, result_phase
from kiln.api.report import TERMINATION_LIMIT, JobReport, parse_report
from kiln.api.request import BuildRequest, Stage, load_request, parse_request
from kiln.api.status import Phase, State, TargetPhase, TargetStatus
from kiln.operator import render
from kiln.operator.config import OperatorConfig
from tests.unit.test_operator_plan import model

P = TargetPhase


def test_the_request_the_operator_renders_is_the_request_the_builder_reads() -> None:
    m = model()
    request = BuildRequest.for_model(m, "s3://kiln/artifacts", "req-target-abc", fp16=True)
    configmap = render.request_configmap(m, request)
    (text,) = configmap["data"].values()
    assert parse_request(text, "request.json") == request
    wire = json.loads(text)
    assert set(wire) == {"model", "artifactsUri", "requestKey", "fp16"}  # camelCase on the wire
    # Only identity and spec travel: a new generation alone renders the same ConfigMap.
    assert wire["model"]["metadata"] == {"name": "lipsync", "namespace": "ml"}
    assert request.model.spec == m.spec


def test_a_bad_request_names_the_file_and_the_field(tmp_path: Any) -> None:
    with pytest.raises(
        KilnInputError, match=r"^r.json: not a valid build request: model.metadata: Field required"
    ):
        parse_request('{"model": {}, "artifactsUri": "x"}', "r.json")
    with pytest.raises(KilnInputError, match="cannot read the build request"):
        load_request(tmp_path / "missing.json")


def test_job_report_round_trips_and_fits_the_termination_limit() -> None:
    report = JobReport(stage=Stage.TARGET, target="cpu", state=State.OK, result_key="result-1")
    assert parse_report(report.to_text()) == report
    huge = report.model_copy(update={"reason": "x" * 10_000, "selection_reason": "y" * 5000})
    text = huge.to_text()
    assert len(text.encode()) <= TERMINATION_LIMIT
    slim = parse_report(text)
    assert slim is not None
    assert (slim.truncated, slim.result_key, slim.state) == (True, "result-1", State.OK)
    assert parse_report("Traceback (most recent call last): ...") is None


def test_failed_report_carries_the_error_kind() -> None:
    exc = StorageUnavailableError("s3://b/k", "cannot reach the S3 endpoint")
    report = JobReport.failed(Stage.EXPORT, exc)
    assert report.error == "s3://b/k: cannot reach the S3 endpoint"
    assert report.error_kind is ErrorKind.TRANSIENT


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [
        (KilnInputError("spec.source.uri", "no such file"), ErrorKind.INPUT, 2),
        (InvalidSpecError("spec.yaml", ["spec.opset: too small"]), ErrorKind.INPUT, 2),
        (StorageUnavailableError("s3://b", "unreachable"), ErrorKind.TRANSIENT, 3),
    ],
)
def test_error_taxonomy_and_exit_codes(error: KilnError, kind: ErrorKind, code: int) -> None:
    assert error.kind is kind
    assert error.exit_code == code
    assert ErrorKind.of_exit_code(code) is kind
    # A storage outage is never bad input: a Job must retry it, not fail for good.
    assert isinstance(error, KilnTransientError) != isinstance(error, KilnInputError)


def test_a_crash_is_neither_input_nor_transient() -> None:
    assert ErrorKind.of_exit_code(1) is ErrorKind.CRASH
    assert ErrorKind.of_exit_code(137) is ErrorKind.CRASH  # OOM-killed
    assert ErrorKind.of_exit_code(None) is ErrorKind.CRASH


def test_pod_failure_policy_follows_the_exit_codes() -> None:
    rules = render.pod_failure_policy()["rules"]
    by_code = {r["onExitCodes"]["values"][0]: r["action"] for r in rules if "onExitCodes" in r}
    assert by_code == {ExitCode.BAD_INPUT: "FailJob", ExitCode.TRANSIENT: "Count"}
    m = model()
    request = BuildRequest.for_model(m, "s3://kiln/a", "req-export-1", fp16=False)
    job = render.builder_job(OperatorConfig(), m, request, None, None)
    assert job["spec"]["podFailurePolicy"] == render.pod_failure_policy()
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(
    ("spec", "gpu", "expected"),
    [
        ({}, True, True),
        ({}, False, False),  # FP16 candidates run on GPUs only
        ({"precisions": ["fp32", "int8"]}, True, False),
        ({"backends": ["pytorch", "torch-compile"]}, True, False),  # nothing builds from FP16 ONNX
        ({"backends": ["tensorrt"], "precisions": ["fp16"]}, True, True),
    ],
)
def test_fp16_rule(spec: dict[str, Any], gpu: bool, expected: bool) -> None:
    assert wants_fp16(model(**spec).spec, gpu) is expected


@pytest.mark.parametrize(
    ("phases", "expected"),
    [
        ([P.SERVING, P.FAILED, P.BUILDING], Phase.READY),
        ([P.SELECTED, P.SKIPPED], Phase.READY),
        ([P.ROLLING_OUT, P.FAILED], Phase.BUILDING),
        ([P.BUILDING, P.BUILT], Phase.BUILDING),
        ([P.RETRYING, P.FAILED], Phase.BUILDING),  # a transient failure is never Failed
        ([P.SKIPPED, P.SKIPPED], Phase.FAILED),  # nothing could run
        ([P.SKIPPED, P.STALE], Phase.FAILED),
        ([P.BUILT, P.FAILED], Phase.FAILED),
        ([P.BUILT, P.SKIPPED], Phase.NO_IMPROVEMENT),
        ([P.STALE], Phase.NO_IMPROVEMENT),
        ([], Phase.NO_IMPROVEMENT),
    ],
)
def test_resource_phase_table(phases: list[TargetPhase], expected: Phase) -> None:
    assert resource_phase(phases) is expected


def test_local_and_cluster_agree_on_an_all_skipped_result() -> None:
    skipped = TargetStatus(name="NVIDIA-L4", device="cuda", state=State.SKIPPED, reason="no GPU")
    assert result_phase(skipped) is P.SKIPPED
    assert resource_phase([result_phase(skipped)]) is Phase.FAILED


def test_spec_problems_are_kept_as_a_list() -> None:
    doc = model().to_wire()
    doc["spec"]["selection"] = {"batchSize": 3}
    with pytest.raises(InvalidSpecError) as info:
        parse_document(doc, "lipsync.yaml")
    assert info.value.problems == ["spec.selection.batchSize: 3 is not one of batchSizes [1]"]
