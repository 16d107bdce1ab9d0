"""The build request: what the operator hands a builder Job, and the Job reads.

One class, one wire format (camelCase JSON in the request ConfigMap): the operator renders it
with `to_json()`, `kiln build` parses it with `parse_request()`. The key of the request is the
name of the folder the Job marks done in the artifact store, so the operator can tell "already
built" from storage alone.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from kiln.api.base import KilnModel
from kiln.api.errors import KilnInputError
from kiln.api.spec import ObjectMeta, OptimizedModel

REQUEST_FILE = "request.json"  # its name in the ConfigMap, and so in the Job's mount


class Stage(StrEnum):
    EXPORT = "export"  # once per model digest: export, parity check, Q/DQ, FP16
    TARGET = "target"  # once per target: build, verify, benchmark, select


class BuildRequest(KilnModel):
    model: OptimizedModel
    artifacts_uri: str
    request_key: str
    fp16: bool = False  # export also the FP16 model (the cluster has GPU targets)

    @staticmethod
    def for_model(
        model: OptimizedModel, artifacts_uri: str, request_key: str, fp16: bool
    ) -> BuildRequest:
        """The request for `model`, carrying only the identity and spec a Job needs (no uid,
        no generation: an unchanged spec renders an unchanged ConfigMap)."""
        meta = ObjectMeta(name=model.metadata.name, namespace=model.metadata.namespace)
        slim = OptimizedModel(metadata=meta, spec=model.spec)
        return BuildRequest(
            model=slim, artifacts_uri=artifacts_uri, request_key=request_key, fp16=fp16
        )

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True, indent=2)


def parse_request(text: str, origin: str) -> BuildRequest:
    try:
        return BuildRequest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise KilnInputError(
            origin, f"not a valid build request: {where}: {first['msg']}"
        ) from None


def load_request(path: Path) -> BuildRequest:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise KilnInputError(str(path), f"cannot read the build request: {reason}") from None
    return parse_request(text, str(path))
