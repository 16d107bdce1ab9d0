"""Errors for bad input: each names the field or file and what was expected."""

from __future__ import annotations


class KilnInputError(Exception):
    """A user's input is wrong: spec field, source file, calibration set or storage location.

    `where` is a spec path (``spec.inputs[0].shape``) or a file/URI; the message says what was
    expected. The CLI prints ``where: message`` and exits non-zero.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


class StorageUnavailableError(KilnInputError):
    """Object storage could not be reached. A user-facing error for a one-shot command, but a
    transient one for the operator, which retries instead of failing the resource."""
