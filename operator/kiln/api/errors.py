"""The error taxonomy, shared by the CLI, the builder Jobs and the operator.

Three kinds, because each needs different treatment:

- **bad input** (`KilnInputError`): the spec, a source file, the calibration set or a storage
  location is wrong. Permanent: a retry cannot help. Exit code 2; the Job fails at once; the
  resource says which field.
- **transient** (`KilnTransientError`): storage or the API server unreachable, a timeout,
  throttling. Exit code 3; the Job retries it with backoff; the resource shows `Degraded` with
  the reason and is never marked `Failed` for it.
- **a bug**: any other exception. Exit code 1 (Python's traceback); the Job retries it up to its
  backoffLimit, since a crash may be a flaky node.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ExitCode(IntEnum):
    """`kiln optimize` / `kiln build` / `kiln serve` exit codes; the Job's podFailurePolicy is
    rendered from these."""

    OK = 0
    FAILED = 1  # a stage failed (optimize), or a crash
    BAD_INPUT = 2  # permanent: fix the input
    TRANSIENT = 3  # retry later: storage or the API server could not be reached


class ErrorKind(StrEnum):
    INPUT = "input"
    TRANSIENT = "transient"
    CRASH = "crash"

    @staticmethod
    def of_exit_code(code: int | None) -> ErrorKind:
        if code == ExitCode.BAD_INPUT:
            return ErrorKind.INPUT
        if code == ExitCode.TRANSIENT:
            return ErrorKind.TRANSIENT
        return ErrorKind.CRASH


class KilnError(Exception):
    """An error that names where it happened (`where`: a spec path such as
    ``spec.inputs[0].shape``, or a file/URI) and says what was expected (`message`)."""

    kind: ErrorKind = ErrorKind.CRASH
    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message

    def renamed(self, where: str) -> KilnError:
        """The same error, located at `where` (e.g. the spec field a URI came from)."""
        return type(self)(where, self.message)


class KilnInputError(KilnError):
    """A user's input is wrong: permanent."""

    kind = ErrorKind.INPUT
    exit_code = ExitCode.BAD_INPUT


class InvalidSpecError(KilnInputError):
    """A spec that breaks the schema or a cross-field rule; `problems` are `field: message`
    lines, each naming its field (the API server and the operator show them joined)."""

    def __init__(self, where: str, problems: list[str]) -> None:
        super().__init__(where, "invalid OptimizedModel\n  " + "\n  ".join(problems))
        self.problems = problems

    def renamed(self, where: str) -> KilnError:
        return InvalidSpecError(where, self.problems)


class KilnTransientError(KilnError):
    """Something Kiln depends on is unavailable for now: retried, never a failure."""

    kind = ErrorKind.TRANSIENT
    exit_code = ExitCode.TRANSIENT


class StorageUnavailableError(KilnTransientError):
    """Object storage could not be reached, timed out or throttled the request."""
