"""What every stage needs: the spec, where relative URIs resolve, storage, and a work folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kiln.api.errors import KilnError
from kiln.api.spec import OptimizedModel, OptimizedModelSpec
from kiln.builder.progress import Reporter
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri

T = TypeVar("T")


@dataclass
class BuildContext:
    model: OptimizedModel
    base_dir: Path
    storage: Storage
    artifacts: ArtifactStore
    work_dir: Path
    cache_dir: Path
    reporter: Reporter
    force: bool = False  # rebuild and re-measure everything
    # Re-measure every target, reusing engines already built (a benchmark over a store that
    # `kiln optimize` filled): the timings are new, the compiles are not repeated.
    remeasure: bool = False

    @property
    def spec(self) -> OptimizedModelSpec:
        return self.model.spec

    def locate(self, field: str, uri: str) -> Location:
        with named(field):
            return parse_uri(uri, self.base_dir)


@contextmanager
def named(field: str) -> Iterator[None]:
    """Prefix Kiln errors raised inside (bad input or storage outages) with the spec field
    they came from, keeping their kind."""
    try:
        yield
    except KilnError as exc:
        if exc.where.startswith("spec."):
            raise
        raise exc.renamed(f"{field} ({exc.where})") from None


def guarded(field: str, fn: Callable[[], T]) -> T:
    with named(field):
        return fn()
