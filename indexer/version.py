"""The installed clipindex version, read once from the package metadata (written only in ``pyproject.toml``)."""

from __future__ import annotations

from importlib import metadata

try:
    __version__: str = metadata.version("clipindex")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
