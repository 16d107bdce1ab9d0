"""FAULT INJECTION: run `kiln` in this process and SIGKILL it between two files of one artifact
folder, the moment a builder pod killed mid-upload leaves behind.

    python -m tests.faults.kill_mid_upload kiln-args...

Every object is still written by the real storage code to the real server; only the process
dies, before the second object of a folder whose first object it has written (the manifest
comes last, so the folder has files and no manifest)."""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from typing import Any

from kiln.storage.artifacts import MANIFEST
from kiln.storage.objects import Location, Storage

_written: Counter[str] = Counter()


def _folder(loc: Location) -> str:
    return loc.uri.rsplit("/", 1)[0]


def _guarded(method: Any) -> Any:
    def wrapper(self: Storage, *args: Any) -> Any:
        loc = next(a for a in args if isinstance(a, Location))
        if not loc.uri.endswith("/" + MANIFEST) and _written[_folder(loc)] >= 1:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # between two files of one artifact
        result = method(self, *args)
        _written[_folder(loc)] += 1
        return result

    return wrapper


def main() -> None:
    Storage.store = _guarded(Storage.store)  # type: ignore[method-assign]
    Storage.write_bytes = _guarded(Storage.write_bytes)  # type: ignore[method-assign]
    from kiln.cli.main import app

    app(sys.argv[1:])


if __name__ == "__main__":
    main()
