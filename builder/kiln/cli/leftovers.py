"""Folders a run leaves behind when it dies where no `finally` runs (SIGKILL, the kernel's OOM
killer): each run names its temporary folders after its process id, and the next run removes
those whose process is gone. A folder whose process still runs is another live run's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def owned_prefix(prefix: str) -> str:
    """The name prefix of this process's temporary folders: `prefix` + pid + '-'."""
    return f"{prefix}{os.getpid()}-"


def owner_of(name: str, prefix: str) -> int | None:
    """The process id a folder named by `owned_prefix(prefix)` belongs to, else None."""
    if not name.startswith(prefix):
        return None
    pid, dash, _ = name[len(prefix) :].partition("-")
    return int(pid) if dash and pid.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep(folder: Path, prefix: str) -> list[Path]:
    """Remove `folder`'s entries named by `owned_prefix(prefix)` of processes that are gone;
    returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        pid = owner_of(entry.name, prefix)
        if pid is None or pid == os.getpid() or alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
