"""Stage: fetch the model source from object storage and fingerprint it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.builder.context import BuildContext, named
from kiln.storage.artifacts import file_digest


@dataclass(frozen=True)
class FetchedSource:
    uri: str
    path: Path
    digest: str  # of the file's bytes, plus the factory name for factory sources


def fetch_source(ctx: BuildContext) -> FetchedSource:
    source = ctx.spec.source
    loc = ctx.locate("spec.source.uri", source.uri)
    with named("spec.source.uri"):
        path = ctx.storage.fetch(loc, ctx.cache_dir / "objects")
    digest = file_digest(path)
    if source.factory:
        digest = f"{digest}+{source.factory}"
    return FetchedSource(loc.uri, path, digest)
