"""clipindex: index photos with CLIP on ONNX Runtime into Qdrant, and search them.

The library API, importable from here::

    from clipindex import Embedder, open_store, search_text

The runtime needs no torch and no transformers: only onnxruntime, numpy, pillow, tokenizers and the Qdrant
clients. :mod:`clipindex.convert` is the only part that uses PyTorch. Names load on first use, so that
``import clipindex`` stays cheap (the CLI's search through a running ``serve`` never loads onnxruntime).

The rooms, lowest first (a room imports only rooms below it; ``tests/test_architecture.py`` enforces it):

* the core modules at the top: :mod:`~clipindex.errors`, :mod:`~clipindex.settings`, :mod:`~clipindex.version`,
  :mod:`~clipindex.display`, :mod:`~clipindex.progress`, :mod:`~clipindex.lock`, :mod:`~clipindex.cstderr`;
* :mod:`clipindex.images` (files and bytes to pixels) and :mod:`clipindex.store` (Qdrant, embedded or server);
* :mod:`clipindex.model` (the ONNX towers, tokens, manifest, similarity, classification);
* :mod:`clipindex.convert` (checkpoint to verified ONNX; torch only here);
* :mod:`clipindex.ingest` (walk, decode ahead, embed, upsert, remember failures);
* :mod:`clipindex.ops` (search, status, migrate, optimize: what the commands do, as functions);
* :mod:`clipindex.web` (``clipindex serve``) and :mod:`clipindex.cli` on top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from clipindex.errors import (
    ClipIndexError,
    CollectionMismatchError,
    CollectionNotFoundError,
    DeviceError,
    ImageError,
    ImageTooLargeError,
    LockHeldError,
    ModelIntegrityError,
    ModelNotFoundError,
    NothingIndexedError,
    StoreBusyError,
    StoreError,
    StoreUnavailableError,
)
from clipindex.version import __version__

if TYPE_CHECKING:
    from clipindex.model.classify import Classification, classify
    from clipindex.model.encode import Embedder
    from clipindex.ops.duplicates import DuplicateGroup, DuplicateMember, DuplicateReport, find_duplicates
    from clipindex.ops.search import SearchResult, search_image, search_text, search_vector
    from clipindex.store import open_store
    from clipindex.store.base import VectorStore

#: public name -> the module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "Embedder": "clipindex.model.encode",
    "Classification": "clipindex.model.classify",
    "classify": "clipindex.model.classify",
    "open_store": "clipindex.store",
    "VectorStore": "clipindex.store",
    "SearchResult": "clipindex.ops.search",
    "search_text": "clipindex.ops.search",
    "search_image": "clipindex.ops.search",
    "search_vector": "clipindex.ops.search",
    "find_duplicates": "clipindex.ops.duplicates",
    "DuplicateReport": "clipindex.ops.duplicates",
    "DuplicateGroup": "clipindex.ops.duplicates",
    "DuplicateMember": "clipindex.ops.duplicates",
}

__all__ = [
    "Classification",
    "ClipIndexError",
    "CollectionMismatchError",
    "CollectionNotFoundError",
    "DeviceError",
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicateReport",
    "Embedder",
    "ImageError",
    "ImageTooLargeError",
    "LockHeldError",
    "ModelIntegrityError",
    "ModelNotFoundError",
    "NothingIndexedError",
    "SearchResult",
    "StoreBusyError",
    "StoreError",
    "StoreUnavailableError",
    "VectorStore",
    "__version__",
    "classify",
    "find_duplicates",
    "open_store",
    "search_image",
    "search_text",
    "search_vector",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clipindex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
