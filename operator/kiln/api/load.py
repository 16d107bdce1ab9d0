"""Load an OptimizedModel from the same YAML a user would `kubectl apply`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.api.spec import OptimizedModel


def field_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic error location as a Kubernetes-style field path."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-after", "function-before")):
            continue  # validator frames add no information for the user
        else:
            out += f".{part}" if out else part
    return out


# A cross-field validator's message starts with the field it is about, relative to the model
# it validates: `selection.batchSize: 7 is not one of ...`.
_RELATIVE_FIELD = re.compile(r"^([A-Za-z_][\w]*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): ")


def problem(loc: tuple[int | str, ...], msg: str) -> str:
    """`path: message`, the path joined with the field a cross-field message names."""
    path = field_path(loc)
    relative = _RELATIVE_FIELD.match(msg)
    if relative and path:
        return f"{path}.{relative.group(1)}: {msg[relative.end() :]}"
    return f"{path or '(document)'}: {msg}"


def parse_document(document: Any, origin: str) -> OptimizedModel:
    if not isinstance(document, dict):
        raise KilnInputError(origin, f"expected a YAML mapping (an {OptimizedModel.__name__})")
    try:
        return OptimizedModel.model_validate(document)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            problems.append(problem(err["loc"], err["msg"].removeprefix("Value error, ")))
        raise InvalidSpecError(origin, problems) from None


def load_file(path: Path) -> OptimizedModel:
    """Read one OptimizedModel document; a multi-document file must hold exactly one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KilnInputError(str(path), f"cannot read the spec file: {exc.strerror}") from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise KilnInputError(str(path), f"not valid YAML: {exc}") from None
    if len(documents) != 1:
        raise KilnInputError(str(path), f"expected one YAML document, found {len(documents)}")
    return parse_document(documents[0], str(path))
