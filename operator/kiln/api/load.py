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


# A spec is a page of YAML; anything this big is a model or a data file passed by mistake.
MAX_SPEC_BYTES = 4 << 20


def one_line(text: str) -> str:
    return " ".join(text.split())


def read_spec_text(path: Path) -> str:
    """The spec file's text, or one KilnInputError naming the file, whatever its bytes."""
    where = str(path)
    try:
        if path.exists() and not path.is_file():
            raise KilnInputError(where, "not a regular file (expected an OptimizedModel YAML)")
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise KilnInputError(
                where,
                f"{size / (1 << 20):.1f} MiB is too large for an OptimizedModel spec "
                "(is it the model file?)",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise KilnInputError(where, f"cannot read the spec file: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise KilnInputError(
            where,
            f"not a text file (byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8): "
            "expected an OptimizedModel YAML, not a model or data file",
        ) from None


def load_file(path: Path) -> OptimizedModel:
    """Read one OptimizedModel document; a multi-document file must hold exactly one."""
    text = read_spec_text(path)
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise KilnInputError(str(path), f"not valid YAML: {one_line(str(exc))}") from None
    except RecursionError:
        raise KilnInputError(str(path), "not valid YAML: nested too deeply") from None
    if len(documents) != 1:
        raise KilnInputError(str(path), f"expected one YAML document, found {len(documents)}")
    return parse_document(documents[0], str(path))
