"""Keep third-party chatter out of the terminal: while a run's libraries work, everything they
write (Python warnings and logging, `print`s, and C++ libraries writing to file descriptors 1
and 2) goes to a log file; Kiln's own progress goes to the terminal through the stream this
yields. A user sees Kiln's table and one line per error, and the log keeps the rest."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def _is_fd(stream: TextIO, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False  # a test runner's buffer, not a file descriptor


@contextlib.contextmanager
def library_output_to(log: Path | None) -> Iterator[TextIO]:
    """Send fds 1 and 2 and sys.stdout/sys.stderr to `log` (appending) for the duration;
    yield the terminal. With `log` None (--verbose) nothing is redirected."""
    if log is None:
        yield sys.stderr
        return
    streams = sys.stdout, sys.stderr
    for stream in streams:
        stream.flush()
    real_stderr = _is_fd(sys.stderr, 2)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal: TextIO = (
        os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8")
        if real_stderr
        else sys.stderr
    )
    with log.open("a", buffering=1, encoding="utf-8", errors="replace") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            sys.stdout = sys.stderr = sink
            yield terminal
        finally:
            sink.flush()
            sys.stdout, sys.stderr = streams
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            if terminal is not streams[1]:
                terminal.close()
