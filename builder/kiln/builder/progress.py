"""Progress reporting: rich bars on a terminal, nothing in tests, plain lines in a Job's log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol, TextIO


class Step(Protocol):
    def advance(self, amount: int = 1) -> None: ...


class Reporter(Protocol):
    def log(self, message: str) -> None: ...

    def step(self, description: str, total: int | None = None) -> AbstractContextManager[Step]: ...


class _NullStep:
    def advance(self, amount: int = 1) -> None:
        pass


class SilentReporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Step]:
        self.lines.append(description)
        yield _NullStep()


class RichReporter:
    """Bars on a terminal; rich degrades to plain lines when output is not a TTY."""

    def __init__(self, file: TextIO | None = None) -> None:
        """`file`: where bars go (the terminal while library output is sent to a log)."""
        from rich.console import Console

        self.console = Console(file=file) if file is not None else Console(stderr=True)

    def log(self, message: str) -> None:
        self.console.print(message, highlight=False)

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Step]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
        if total is not None:
            columns.append(MofNCompleteColumn())
        with Progress(
            *columns, TimeElapsedColumn(), console=self.console, transient=False
        ) as progress:
            task = progress.add_task(description, total=total)

            class _Step:
                def advance(self, amount: int = 1) -> None:
                    progress.advance(task, amount)

            yield _Step()
            if total is None:
                progress.update(task, total=1, completed=1)
