"""Turning library exceptions into one line a user can act on."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException) -> str:
    """The innermost cause's first line: exporters and compilers wrap the useful message
    (e.g. `No ONNX function found for aten._linalg_svd`) in layers of generic advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:400]


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")


@contextmanager
def logged_warnings(logger: str = "torch.export") -> Iterator[list[str]]:
    """The warnings `logger` logs inside the block. torch.export.load logs why it could not
    deserialize a program as a warning and raises only `Please check the warnings above`."""
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # The exception is the record's exc_info, not in its message.
            trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
            messages.append(f"{record.getMessage()}\n{trace}")

    handler = _Keep(logging.WARNING)
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield messages
    finally:
        target.removeHandler(handler)


def with_warned_cause(text: str, warnings: list[str]) -> str:
    """`text`, or where it points at the warnings, the first sentence of the exception the
    last warning ends with (`NotImplementedError: Deserializing transformers.modeling_outputs.
    BaseModelOutput in pytree failed because the serialized type is not registered in this
    process`): the advice after it is torch's, for whoever registers the type."""
    if "warnings above" not in text:
        return text
    for message in reversed(warnings):
        raised = [ln.strip() for ln in message.splitlines() if _RAISED.match(ln.strip())]
        if raised:
            return _ANSI.sub("", raised[-1]).split(". ")[0][:400]
    return text


def load_exported(path: str) -> Any:
    """torch.export.load, raising with the cause torch logged as a warning (an unregistered
    output type) instead of its own `Please check the warnings above`."""
    import torch

    with logged_warnings() as warned:
        try:
            return torch.export.load(path)
        except Exception as exc:
            raise RuntimeError(with_warned_cause(str(exc), warned)) from None
