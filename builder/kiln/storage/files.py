"""Object storage on the local file system (plain paths and file:// URIs).

A location's key is an absolute path. Errors name that path, since it is what the user wrote
(or what a relative path in the spec resolved to).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kiln.api.errors import KilnInputError
from kiln.storage.location import Location


@contextmanager
def atomic_write(dest: Path) -> Iterator[Path]:
    """A temporary file next to `dest`, renamed over it only on success: a reader never sees
    half a file, and a failed write leaves nothing behind."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Next to `dest`, not in /tmp, so the final rename stays on one file system (atomic).
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def file_identity(path: Path) -> str:
    """Size and modification time: changes whenever the content does, without reading it."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _existing_file(loc: Location) -> Path:
    path = Path(loc.key)
    if not path.is_file():
        raise KilnInputError(loc.key, "no such file")
    return path


class FileStorage:
    """The `ObjectStorage` operations on local files; every write is atomic."""

    def exists(self, loc: Location) -> bool:
        return Path(loc.key).is_file()

    def read_bytes(self, loc: Location) -> bytes:
        try:
            return Path(loc.key).read_bytes()
        except FileNotFoundError:
            raise KilnInputError(loc.key, "no such file") from None
        except OSError as exc:
            raise KilnInputError(loc.key, f"cannot read: {exc.strerror}") from None

    def write_bytes(self, loc: Location, data: bytes) -> None:
        with atomic_write(Path(loc.key)) as tmp:
            tmp.write_bytes(data)

    def listing(self, prefix: Location) -> list[tuple[Location, str]]:
        root = Path(prefix.key)
        if not root.is_dir():
            raise KilnInputError(prefix.key, "no such folder")
        return [
            (Location("file", "", str(p)), file_identity(p))
            for p in sorted(root.rglob("*"))
            if p.is_file()
        ]

    def identity(self, loc: Location) -> str:
        return file_identity(_existing_file(loc))

    def fetch(self, loc: Location, cache_dir: Path | None) -> Path:
        # The file is already local: no copy, so no download folder is needed.
        return _existing_file(loc)

    def store(self, src: Path, loc: Location) -> None:
        with atomic_write(Path(loc.key)) as tmp:
            shutil.copyfile(src, tmp)
