"""The Job report: the one-line JSON a builder Job writes to its termination message, and the
operator reads back from the failed or finished pod.

Kubernetes keeps at most 4096 bytes of a termination message, so the report is compact (the
full result lives in object storage) and `to_text()` trims it to fit, keeping what the
operator needs: the stage, the target, the state, the error and the result key.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from kiln.api.base import KilnModel
from kiln.api.errors import ErrorKind, KilnError
from kiln.api.request import Stage
from kiln.api.status import State

TERMINATION_LIMIT = 4096


class JobReport(KilnModel):
    stage: Stage
    target: str | None = None
    state: State | None = None
    reason: str | None = None
    error: str | None = None  # `where: message` of a KilnError that ended the Job
    error_kind: ErrorKind | None = None
    # stage target
    result: str | None = None
    result_key: str | None = None
    selected: str | None = None
    selection_reason: str | None = None
    # stage export
    model_digest: str | None = None
    onnx: str | None = None
    qdq: str | None = None
    fp16: str | None = None
    stages: list[str] | None = None
    truncated: bool | None = None

    def to_text(self) -> str:
        text = json.dumps(self.to_wire(), separators=(",", ":"))
        if len(text.encode()) <= TERMINATION_LIMIT:
            return text
        slim = JobReport(
            stage=self.stage,
            target=self.target,
            state=self.state,
            result_key=self.result_key,
            error=self.error[:1500] if self.error else None,  # starts with the field
            error_kind=self.error_kind,
            truncated=True,
        )
        return json.dumps(slim.to_wire(), separators=(",", ":"))

    @staticmethod
    def failed(stage: Stage, exc: KilnError, target: str | None = None) -> JobReport:
        return JobReport(stage=stage, target=target, error=str(exc), error_kind=exc.kind)


def parse_report(text: str) -> JobReport | None:
    """The report in a termination message, or None when the pod wrote none (a crash before
    it could, or Kubernetes fell back to the log tail)."""
    try:
        return JobReport.model_validate_json(text.strip())
    except ValidationError:
        return None
