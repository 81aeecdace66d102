"""Synthetic points written the way ``clipindex ingest`` writes them: one recipe for every benchmark that needs a
large embedded store (``million.py``, ``concurrency.py``, ``search_cold_start.py``)."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt


def path_of(k: int) -> str:
    """The photo path of synthetic point ``k``: 1000 per folder."""
    return f"/photos/{k // 1000:04d}/IMG_{k:07d}.jpg"


def synthetic_point(k: int, vector: npt.ArrayLike, model_name: str) -> Any:
    """Point ``k`` with ingest's payload for a 12 MP JPEG at :func:`path_of` (its size, mtime and sha256 derived
    from ``k``)."""
    from clipindex.ingest.points import make_payload, point_id
    from clipindex.store.base import Point

    path = path_of(k)
    payload = make_payload(
        path=path,
        size=2_000_000 + k,
        mtime_ns=1_700_000_000_000_000_000 + k,
        sha256=f"{k:064x}",
        width=4032,
        height=3024,
        image_format="JPEG",
        model=model_name,
    )
    return Point(point_id(path), vector, payload)
