"""Vector storage: the embedded Qdrant Edge store (default) or a Qdrant server.

``open_store(data_dir, qdrant_url, collection, api_key)`` picks one; both implement
:class:`~clipindex.store.base.VectorStore`. Importing this package does not import qdrant-client
(slow); only talking to a server does. May import the core modules only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from clipindex.settings import DEFAULT_TIMEOUT_S, DEFAULT_WAIT_S, default_data_dir
from clipindex.store.base import CollectionInfo, Hit, Point, VectorStore, ancestor_dirs
from clipindex.store.edge import EdgeStore, cleanup_orphan_temp_segments
from clipindex.store.server import InsecureApiKeyWarning, ServerStore
from clipindex.store.sizing import CollectionSettings

__all__ = [
    "DEFAULT_WAIT_S",
    "CollectionInfo",
    "CollectionSettings",
    "EdgeStore",
    "Hit",
    "InsecureApiKeyWarning",
    "Point",
    "ServerStore",
    "VectorStore",
    "ancestor_dirs",
    "cleanup_orphan_temp_segments",
    "default_data_dir",
    "open_store",
]


def open_store(
    data_dir: Path | None,
    qdrant_url: str | None,
    collection: str,
    api_key: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    shards: int | None = None,
    replicas: int | None = None,
    settings: CollectionSettings | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    role: str = "a clipindex process",
) -> VectorStore:
    """The store to use: a Qdrant server when ``qdrant_url`` is given, else the embedded store in
    ``data_dir`` (or :func:`default_data_dir`). Nothing is opened yet: call
    :meth:`VectorStore.ensure_collection` (ingest, search) or :meth:`VectorStore.collection_info`
    (status). ``api_key``, ``timeout_s``, ``shards``, ``replicas``, ``settings`` (vector storage of a new
    collection) and ``on_wait`` (told once when the server does not answer and calls are retried) only apply to a
    server; ``wait_s`` (how long to wait for the store while another process has it open) and ``role`` (how this
    process is named to those kept waiting) only to the embedded store (:mod:`clipindex.store.turns`).
    """
    if qdrant_url:
        return ServerStore(
            qdrant_url,
            collection,
            api_key,
            timeout_s=timeout_s,
            shards=shards,
            replicas=replicas,
            settings=settings,
            on_warning=on_warning,
            on_wait=on_wait,
        )
    return EdgeStore(data_dir if data_dir is not None else default_data_dir(), collection, wait_s=wait_s, role=role)
