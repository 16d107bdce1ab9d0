"""Split a large file into parts that fit one device call, and join them back, checked by the
SHA-256 of the whole. Standard library only: it runs on the GPU machine before anything else
is installed there."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PART_BYTES = 60 << 20  # a device call carries at most 64 MiB with the working tree
MANIFEST = "parts.json"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split(source: Path, folder: Path, part_bytes: int = PART_BYTES) -> dict[str, Any]:
    """`folder/NAME.part-01` ... and `folder/parts.json` (name, size, sha256, parts)."""
    folder.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    with source.open("rb") as handle:
        while block := handle.read(part_bytes):
            name = f"{source.name}.part-{len(parts) + 1:02d}"
            (folder / name).write_bytes(block)
            parts.append(name)
    manifest = {
        "name": source.name,
        "size": source.stat().st_size,
        "sha256": sha256_of(source),
        "partBytes": part_bytes,
        "parts": parts,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class JoinError(RuntimeError):
    """A part is missing, out of order, or the joined file does not match its checksum."""


def join_part(folder: Path, number: int, dest_dir: Path) -> tuple[Path, bool]:
    """Append part `number` (1-based) to `dest_dir/NAME`; part 1 starts the file. Returns the
    file and whether it is complete, which it only is once its SHA-256 matches."""
    manifest = json.loads((folder / MANIFEST).read_text())
    parts: list[str] = manifest["parts"]
    if not 1 <= number <= len(parts):
        raise JoinError(f"part {number}: there are parts 1..{len(parts)}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / manifest["name"]
    expected_before = sum(_part_size(manifest, i) for i in range(number - 1))
    have = dest.stat().st_size if dest.exists() else 0
    if number > 1 and have != expected_before:
        raise JoinError(
            f"part {number}: {dest} holds {have} bytes, {expected_before} expected after "
            f"parts 1..{number - 1} (the machine was given back, or a part was skipped?)"
        )
    with dest.open("wb" if number == 1 else "ab") as out:
        out.write((folder / parts[number - 1]).read_bytes())
    if number < len(parts):
        return dest, False
    if sha256_of(dest) != manifest["sha256"]:
        raise JoinError(f"{dest}: SHA-256 does not match {MANIFEST}; join again from part 1")
    return dest, True


def _part_size(manifest: dict[str, Any], index: int) -> int:
    size, total = int(manifest["partBytes"]), int(manifest["size"])
    return min(size, total - index * size)
