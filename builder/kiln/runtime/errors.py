"""Turning library exceptions into one line a user can act on."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def root_cause(exc: BaseException) -> str:
    """The innermost cause's first line: exporters and compilers wrap the useful message
    (e.g. `No ONNX function found for aten._linalg_svd`) in layers of generic advice."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = _ANSI.sub("", str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:400]
