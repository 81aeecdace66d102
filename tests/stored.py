"""Read back what an ingest left in an embedded store (opened, read, closed: the store is free again after)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipindex.store.edge import EdgeStore

COLLECTION = "images"


def stored_points(data_dir: Path, collection: str = COLLECTION) -> dict[str, dict[str, Any]]:
    """Every point's id and payload."""
    store = EdgeStore(data_dir, collection)
    try:
        store.collection_info()
        return dict(store.iter_payloads())
    finally:
        store.close()


def stored_vectors(data_dir: Path, ids: list[str], collection: str = COLLECTION) -> dict[str, np.ndarray]:
    """The unit vectors of the points among ``ids`` that exist."""
    store = EdgeStore(data_dir, collection)
    try:
        store.collection_info()
        return store.get_vectors(ids)
    finally:
        store.close()
