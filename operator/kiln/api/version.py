"""The one place Kiln's version is read: the installed distribution's metadata (pyproject.toml).

It goes into every cache key (a new builder may produce different artifacts for the same
inputs) and into the default image names."""

from __future__ import annotations

from importlib import metadata

try:
    VERSION = metadata.version("kiln")
except metadata.PackageNotFoundError:  # a source tree on sys.path without an install
    VERSION = "0.0.0+unknown"

DEFAULT_IMAGE = f"kiln-builder:{VERSION}"
