"""Search: the library API behind ``clipindex search``.

Every search function takes an open-able :class:`~clipindex.store.base.VectorStore` (from
:func:`clipindex.store.open_store`) and an :class:`~clipindex.model.encode.Embedder`, and returns :class:`SearchResult`
rows,
best first (the README's Library API section has examples).

* Scores are cosine similarities of query and image embeddings (CLIP's ranking, unscaled).
* The collection is opened with ``create=False``: a search never creates one. A missing or empty
  collection raises :class:`~clipindex.errors.NothingIndexedError`; a collection built by another model
  (name or dimension) :class:`~clipindex.errors.CollectionMismatchError`.
* ``threshold`` keeps hits scoring ``>= threshold`` exactly (Qdrant's own ``score_threshold`` is strict,
  so the largest float32 below the threshold is what is sent). ``limit`` counts after the threshold.
* ``path_prefix`` is a folder (or one file): relative paths are taken against the current directory, as
  ingest stores absolute paths. It is a Qdrant payload filter on the indexed ancestor folders of each
  path (see :mod:`clipindex.store.base`), so ``/a/photos`` never matches ``/a/photos2``.
* Text queries are tokenized like transformers' ``CLIPTokenizer`` and truncated at the model's context
  (77 tokens); ``on_truncate(text)`` is called when that happens. Only the tower a query needs is loaded
  (a text search never loads ``vision.onnx``), on a worker thread while the store opens.
* ``filters`` (:class:`~clipindex.store.base.SearchFilter`) keeps hits taken in ``[after, before)`` (epoch
  seconds of ``taken_at``; a naive EXIF time counts as UTC) and whose camera make or model (or a run of
  consecutive words of either) equals ``camera``, case-insensitively; payload-indexed filters, applied before ``limit``.
* ``sort="date"`` orders the ``limit`` best hits by ``taken_at``, oldest first (ties by score); ranks follow that
  order. ``sort="score"`` (the default) is the usual best first.

"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

import numpy as np
import numpy.typing as npt

from clipindex.dates import DATE_FORMATS, parse_when
from clipindex.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    NothingIndexedError,
)
from clipindex.images.inputs import ImageInput, describe, load_input
from clipindex.model.encode import Embedder
from clipindex.ops.query import QueryTerm, combine_terms
from clipindex.ops.results import SearchResult, resolve_path_prefix, to_results
from clipindex.settings import DEFAULT_LIMIT
from clipindex.store.base import CollectionInfo, SearchFilter, VectorStore

__all__ = [
    "DATE_FORMATS",
    "SearchFilter",
    "SearchResult",
    "open_collection",
    "parse_when",
    "resolve_path_prefix",
    "search_image",
    "search_terms",
    "search_text",
    "search_vector",
    "sort_by_date",
]

T = TypeVar("T")
#: how search orders its hits: by score (best first) or by ``taken_at`` (oldest first)
SortOrder = Literal["score", "date"]

INGEST_HINT = "run `clipindex ingest DIR` first"


# --- opening the collection ---------------------------------------------------------------------------------


def open_collection(
    store: VectorStore,
    model_name: str | None = None,
    vector_dim: int | None = None,
    *,
    model_dir: str | os.PathLike[str] | None = None,
) -> CollectionInfo:
    """Open the store's existing collection for reading; never creates one.

    With ``model_name`` and ``vector_dim``, the collection must have been built by that model
    (:class:`~clipindex.errors.CollectionMismatchError` otherwise); without, any collection is accepted
    (:func:`search_vector` with a raw vector). Raises :class:`~clipindex.errors.NothingIndexedError` when
    there is no such collection. ``model_dir`` (where the query model comes from) goes into the mismatch
    message.
    """
    try:
        if model_name is None or vector_dim is None:
            return store.collection_info()
        return store.ensure_collection(vector_dim, model_name, create=False)
    except CollectionMismatchError as exc:
        found = str(exc).split("; use the same model", 1)[0]  # the store's advice is meant for ingest
        origin = f" (from {os.fspath(model_dir)})" if model_dir is not None else ""
        raise CollectionMismatchError(
            f"cannot search: {found}{origin}; search with the model that built the collection "
            "(--model-dir / CLIPINDEX_MODEL_DIR), ingest this model into another --collection, or switch the "
            "collection to this model (clipindex ingest DIR --model-dir THIS_MODEL --reembed)"
        ) from None
    except CollectionNotFoundError:
        raise NothingIndexedError(
            f"nothing is indexed in {store.describe()} (no collection {store.collection!r}): {INGEST_HINT} "
            "(or check --data-dir / --qdrant-url / --collection)"
        ) from None


def _store_threshold(threshold: float | None) -> float | None:
    """The value to give Qdrant so that it keeps exactly the scores ``>= threshold``.

    Qdrant (Edge, and the server) compares float32 scores with ``score > score_threshold``; the largest
    float32 strictly below ``threshold`` turns that into ``score >= threshold`` for every float32 score.
    (:func:`search_vector` also filters the hits with ``>=``, so an engine that compares with ``>=`` gives
    the same result.)
    """
    if threshold is None:
        return None
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, not {threshold}")
    below = np.float32(threshold)
    if float(below) >= threshold:
        below = np.nextafter(below, np.float32(-np.inf))
    return float(below)


def search_vector(
    store: VectorStore,
    vector: npt.ArrayLike,
    *,
    limit: int = DEFAULT_LIMIT,
    threshold: float | None = None,
    path_prefix: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    filters: SearchFilter | None = None,
    sort: SortOrder = "score",
) -> list[SearchResult]:
    """The ``limit`` stored images nearest to ``vector`` (any float vector of the collection's dimension).

    ``model_name``: when given, the collection must have been built by that model. See the module doc
    for ``threshold`` and ``path_prefix``.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    info = open_collection(store, model_name, query.shape[0] if model_name is not None else None)
    if query.shape[0] != info.vector_dim:
        raise ValueError(f"the query vector has {query.shape[0]} dimensions, the collection {info.vector_dim}")
    prefix = resolve_path_prefix(path_prefix)
    if filters is not None and filters.camera is not None:
        filters = SearchFilter(filters.after, filters.before, " ".join(filters.camera.lower().split()))
    hits = store.search(
        query,
        limit=limit,
        score_threshold=_store_threshold(threshold),
        path_prefix=prefix,
        filters=None if filters is None or filters.empty else filters,
    )
    if threshold is not None:
        hits = [h for h in hits if h.score >= threshold]
    if not hits and store.count(exact=True) == 0:
        raise NothingIndexedError(
            f"nothing is indexed in {store.describe()} yet (the collection is empty): {INGEST_HINT}"
        )
    results = to_results(hits)
    if sort == "date":
        results = sort_by_date(results)
    return results


def sort_by_date(results: Sequence[SearchResult]) -> list[SearchResult]:
    """``results`` ordered by ``taken_ts`` (oldest first; undated last; ties best score first), re-ranked."""

    def key(result: SearchResult) -> tuple[int, float, float]:
        stamp = result.payload.get("taken_ts")
        if isinstance(stamp, (int, float)):
            return (0, float(stamp), -result.score)
        return (1, 0.0, -result.score)

    ordered = sorted(results, key=key)
    return [dataclasses.replace(result, rank=rank) for rank, result in enumerate(ordered, 1)]


def _embed_query(
    store: VectorStore,
    embedder: Embedder,
    tower: Literal["text", "vision"],
    prepare: Callable[[], T],
    encode: Callable[[T], np.ndarray],
) -> np.ndarray:
    """Open the collection and embed a query, overlapping the two slow parts of a cold start.

    A worker thread creates the tower's ONNX Runtime session (it releases the GIL), then runs ``encode`` on
    what another worker's ``prepare`` made (tokenizer load, image decoding), while this thread waits for its turn
    on the store and opens the collection (Qdrant Edge holds the GIL while it loads). So a search that waits for
    its turn has its query vector ready when it gets in, and holds the store only to open and query it. The
    collection is checked against the embedder's model; a store error wins over an embedding error, and the
    workers have finished whenever this returns or raises.
    """
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="clipindex-load") as pool:
        preparing = pool.submit(prepare)

        def embed() -> np.ndarray:
            embedder.tower(tower)
            return encode(preparing.result())

        embedding = pool.submit(embed)
        open_collection(store, embedder.model_name, embedder.dimension, model_dir=embedder.model_dir)
        return embedding.result()


def search_text(
    store: VectorStore,
    embedder: Embedder,
    query: str,
    *,
    limit: int = DEFAULT_LIMIT,
    threshold: float | None = None,
    path_prefix: str | os.PathLike[str] | None = None,
    on_truncate: Callable[[str], None] | None = None,
    filters: SearchFilter | None = None,
    sort: SortOrder = "score",
) -> list[SearchResult]:
    """Images best matching a text query (text tower only). ``on_truncate(query)`` when cut at the context."""
    vector = _embed_query(
        store,
        embedder,
        "text",
        lambda: embedder.tokenizer,
        lambda _: embedder.encode_text([query], on_truncate=on_truncate)[0],
    )
    return search_vector(
        store,
        vector,
        limit=limit,
        threshold=threshold,
        path_prefix=path_prefix,
        model_name=embedder.model_name,
        filters=filters,
        sort=sort,
    )


def search_image(
    store: VectorStore,
    embedder: Embedder,
    image: ImageInput,
    *,
    limit: int = DEFAULT_LIMIT,
    threshold: float | None = None,
    path_prefix: str | os.PathLike[str] | None = None,
    filters: SearchFilter | None = None,
    sort: SortOrder = "score",
) -> list[SearchResult]:
    """Images most like ``image``: a file, decoded and preprocessed exactly as ingest does, or any other input
    :meth:`Embedder.encode_images` takes (bytes, a URL, a PIL image...).

    An indexed file finds itself first with a score of ~1. Raises :class:`~clipindex.errors.ImageError`
    when the image cannot be read or decoded.
    """
    preprocessor = embedder.preprocessor

    def prepare() -> np.ndarray:
        decoded = load_input(image, preprocessor, name=describe(image, 0), urls=embedder.urls)
        pixels: np.ndarray = preprocessor.preprocess(decoded)
        return pixels

    vector = _embed_query(store, embedder, "vision", prepare, lambda pixels: embedder.encode_pixels(pixels[None])[0])
    return search_vector(
        store,
        vector,
        limit=limit,
        threshold=threshold,
        path_prefix=path_prefix,
        model_name=embedder.model_name,
        filters=filters,
        sort=sort,
    )


def search_terms(
    store: VectorStore,
    embedder: Embedder,
    terms: Sequence[QueryTerm],
    *,
    limit: int = DEFAULT_LIMIT,
    threshold: float | None = None,
    path_prefix: str | os.PathLike[str] | None = None,
    on_truncate: Callable[[str], None] | None = None,
    filters: SearchFilter | None = None,
    sort: SortOrder = "score",
) -> list[SearchResult]:
    """Images best matching a combination of texts and images (:mod:`clipindex.ops.query`: the weighted sum of
    the ``+`` terms' embeddings minus the ``-`` terms', normalised). Texts run the text tower, image files are
    decoded and preprocessed as ingest does; only the towers the terms need are loaded. Raises ValueError for no
    terms or terms that cancel out, :class:`~clipindex.errors.ImageError` for an unreadable image."""
    if not terms:
        raise ValueError("give at least one query term")
    open_collection(store, embedder.model_name, embedder.dimension, model_dir=embedder.model_dir)
    vectors: list[np.ndarray] = []
    preprocessor = embedder.preprocessor if any(t.kind == "image" for t in terms) else None
    for term in terms:
        if term.kind == "text":
            vectors.append(embedder.encode_text([term.value], on_truncate=on_truncate)[0])
        else:
            assert preprocessor is not None
            decoded = load_input(term.value, preprocessor, name=term.value, urls=embedder.urls)
            vectors.append(embedder.encode_pixels(preprocessor.preprocess(decoded)[None])[0])
    vector = combine_terms(vectors, terms)
    return search_vector(
        store,
        vector,
        limit=limit,
        threshold=threshold,
        path_prefix=path_prefix,
        model_name=embedder.model_name,
        filters=filters,
        sort=sort,
    )
