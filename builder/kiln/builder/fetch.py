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
    # of the file's bytes, plus the factory name for factory sources and the constants the
    # model is called with: every artifact built from the source depends on them
    digest: str


def fetch_source(ctx: BuildContext) -> FetchedSource:
    source = ctx.spec.source
    loc = ctx.locate("spec.source.uri", source.uri)
    with named("spec.source.uri"):
        path = ctx.storage.fetch(loc, ctx.cache_dir / "objects")
    digest = file_digest(path)
    if source.factory:
        digest = f"{digest}+{source.factory}"
    if ctx.spec.constants:
        digest = f"{digest}+" + ",".join(c.text() for c in ctx.spec.constants)
    return FetchedSource(loc.uri, path, digest)
