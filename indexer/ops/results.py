"""Search results (:class:`SearchResult`) and the folder filter's normal form: what a search returns, kept apart
from :mod:`clipindex.ops.search` so that printing results (``clipindex search`` through a running serve) never
imports the model's runtime or numpy."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipindex.ingest.points import absolute, display_path

if TYPE_CHECKING:
    from clipindex.store.base import Hit

__all__ = ["SearchResult", "resolve_path_prefix", "to_results", "truncation_warning"]


@dataclass(frozen=True)
class SearchResult:
    """One search hit: its rank (1 = best), cosine score, file path and image size (None when unknown)."""

    rank: int
    score: float
    path: str
    width: int | None
    height: int | None
    #: the point id and the whole stored payload (size, mtime, sha256, format, model, indexed_at...)
    id: str
    payload: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """What ``clipindex search --json`` prints for this hit (keys in this order); ``path_bytes`` (base64) only
        for a path that is not valid UTF-8."""
        data: dict[str, Any] = {
            "rank": self.rank,
            "score": self.score,
            "path": self.path,
            "width": self.width,
            "height": self.height,
        }
        raw = self.payload.get("path_bytes")
        if isinstance(raw, str):
            data["path_bytes"] = raw
        return data


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def to_results(hits: Sequence[Hit]) -> list[SearchResult]:
    """Store hits -> ranked results, sorted by score (descending), ties by path, so output is stable."""
    ordered = sorted(hits, key=lambda h: (-h.score, str(h.payload.get("path", "")), h.id))
    return [
        SearchResult(
            rank=rank,
            score=float(hit.score),
            path=str(hit.payload.get("path", "")),
            width=_int_or_none(hit.payload.get("width")),
            height=_int_or_none(hit.payload.get("height")),
            id=hit.id,
            payload=dict(hit.payload),
        )
        for rank, hit in enumerate(ordered, start=1)
    ]


def resolve_path_prefix(path_prefix: str | os.PathLike[str] | None) -> str | None:
    """The absolute, normalised folder (or file) ``path_prefix`` names, as ingest stores paths."""
    if path_prefix is None:
        return None
    text = os.fspath(path_prefix)
    if not text:
        raise ValueError("path_prefix must not be empty")
    return display_path(absolute(text))


def truncation_warning(context_length: int) -> str:
    """What a text query cut at the model's context is told (the CLI's ``Warning:`` line, the API's ``warnings``)."""
    return f"the query is longer than {context_length} tokens; CLIP sees only its beginning (the rest is ignored)"
