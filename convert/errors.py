"""Errors of the conversion: typed, each with a message to show as is and, where it helps, hint lines.

They derive from :class:`clipindex.errors.ClipIndexError`, so the CLI prints them and exits as for any other.
"""

from __future__ import annotations

from clipindex.errors import ClipIndexError

__all__ = ["ConvertError", "MissingExtraError", "ParityError", "SourceUnavailableError"]


class ConvertError(ClipIndexError):
    """The conversion could not run (bad source, missing extra, output exists...)."""


class MissingExtraError(ClipIndexError):
    """An optional dependency group is not installed."""


class SourceUnavailableError(ConvertError):
    """The checkpoint to convert could not be downloaded (offline) and is not cached; ``hints`` say the two ways
    forward (a local checkpoint, or a random-weight trial)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.hints = (
            "real weights: pass a local checkpoint folder: `clipindex convert /path/to/checkpoint` "
            "(ingest: --source-model /path/to/checkpoint, or CLIPINDEX_SOURCE_MODEL=/path/to/checkpoint)",
            "a trial without them (random weights: the rankings are meaningless): "
            "`python -m clipindex.convert.checkpoint /tmp/clip-trial && "
            "CLIPINDEX_SOURCE_MODEL=/tmp/clip-trial clipindex ingest ./images`",
        )


class ParityError(ConvertError):
    """The exported ONNX model diverges from the PyTorch reference; nothing was written."""
