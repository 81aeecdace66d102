"""The storage interface shared by the embedded (Qdrant Edge) and the server (qdrant-client) stores.

One *collection* holds one point per indexed file:

* ``id``: a UUID string (the caller derives it, e.g. ``uuid5(namespace, path)``);
* ``vector``: the CLIP embedding, float32 ``[D]``; collections use cosine distance, so the engines
  keep vectors L2-normalised and :meth:`VectorStore.get_vectors` returns unit-norm vectors;
* ``payload``: a JSON object. Keys the store relies on:

  - ``"path"`` (str, required for :meth:`VectorStore.search` ``path_prefix``): the file's absolute,
    ``/``-separated path. Indexed as a keyword.
  - ``"model"`` (str): the model name; :meth:`VectorStore.upsert` fills it in when missing, so that
    a collection whose metadata was lost can still be checked against the model in use.
  - ``"dirs"`` (list[str], *internal*): every ancestor directory of ``path`` (``"/"``, ``"/a"``,
    ``"/a/photos"`` for ``/a/photos/x.jpg``). Computed by :meth:`VectorStore.upsert`, indexed as a
    keyword, hidden from :meth:`search` hits and from :meth:`iter_payloads` unless asked for.

A folder filter (``path_prefix``) is an exact match on ``dirs``, so ``/a/photos`` never matches
``/a/photos2/z.jpg``; it may also name one file (``dirs == p OR path == p``). docs/design.md says why.

A collection remembers the model name and the vector dimension it was built with
(:class:`CollectionInfo`). :meth:`VectorStore.ensure_collection` compares them with the model in
use and raises :class:`~clipindex.errors.CollectionMismatchError` *before anything is written* (the embedded store
keeps them in ``collection.json``, the server store in the collection's ``metadata``).
"""

from __future__ import annotations

import contextlib
import posixpath
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from clipindex.dates import CAMERA_KEY, DATED_KEY, TAKEN_TS_KEY
from clipindex.errors import StoreError
from clipindex.settings import DEFAULT_LIMIT

#: payload key holding the ancestor directories of ``path`` (internal, indexed)
DIRS_KEY = "dirs"
#: payload key holding the file path (indexed)
PATH_KEY = "path"
#: payload key holding the model name (filled in by :meth:`VectorStore.upsert` when missing)
MODEL_KEY = "model"
#: payload keys that get a keyword index
INDEXED_KEYS: tuple[str, ...] = (PATH_KEY, DIRS_KEY, CAMERA_KEY, DATED_KEY)
#: payload keys that get a float (range) index
FLOAT_INDEXED_KEYS: tuple[str, ...] = (TAKEN_TS_KEY,)
#: payload keys the store adds and hides from hits
INTERNAL_KEYS: tuple[str, ...] = (DIRS_KEY,)
#: version of the metadata layout written by this code
META_FORMAT = 1
#: model name reported for a collection whose model cannot be known (empty, metadata lost)
UNKNOWN_MODEL = "unknown"


#: points of a vector scan between two :meth:`VectorStore.release_memory` calls (a 512-d vector maps 2 KB)
RELEASE_EVERY_VECTORS = 100_000


@dataclass(frozen=True)
class SearchFilter:
    """Payload conditions of a search, all of which a hit meets: ``after <= taken_ts < before`` (epoch seconds;
    either bound ``None``: open) and ``camera`` (lowercase) among the point's ``camera_lc``."""

    after: float | None = None
    before: float | None = None
    camera: str | None = None

    @property
    def empty(self) -> bool:
        return self.after is None and self.before is None and self.camera is None


@dataclass
class Point:
    """One point to store: ``id`` is a UUID string, ``vector`` float32 ``[D]``, ``payload`` JSON."""

    id: str
    vector: npt.NDArray[np.float32]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: the point id, its cosine similarity and its payload (without ``dirs``)."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass
class Lending:
    """What :meth:`VectorStore.lend_to_readers` did: how many waiting processes it let in (0: none waited)."""

    processes: int = 0


@dataclass(frozen=True)
class CollectionInfo:
    """What a collection was built with."""

    model_name: str
    vector_dim: int
    #: True when :meth:`VectorStore.ensure_collection` has just created it
    created: bool = False


def ancestor_dirs(path: str) -> list[str]:
    """Every ancestor directory of a ``/``-separated path, root first.

    >>> ancestor_dirs("/a/photos/x.jpg")
    ['/', '/a', '/a/photos']
    >>> ancestor_dirs("rel/x.jpg")
    ['rel']
    """
    parent = posixpath.dirname(posixpath.normpath(path))
    out: list[str] = []
    while parent and parent not in out:
        out.append(parent)
        nxt = posixpath.dirname(parent)
        if nxt == parent:
            break
        parent = nxt
    out.reverse()
    return out


def normalize_prefix(path_prefix: str) -> str:
    """The folder (or file) a ``path_prefix`` names: ``"/a/photos/"`` -> ``"/a/photos"``.

    Compared with the stored paths as they are: give it in the same form (absolute, ``/``-separated).
    """
    if not path_prefix:
        raise ValueError("path_prefix must not be empty")
    return posixpath.normpath(path_prefix)


def check_id(point_id: str) -> str:
    """Return the canonical form of a UUID string, or raise ValueError."""
    try:
        return str(uuid.UUID(str(point_id)))
    except ValueError:
        raise ValueError(f"point id {point_id!r} is not a UUID") from None


def as_vector(vector: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """``vector`` as a contiguous float32 ``[dim]`` array, or raise ValueError."""
    arr = np.ascontiguousarray(vector, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"vector has shape {arr.shape}, expected ({dim},)")
    if not np.all(np.isfinite(arr)):
        raise ValueError("vector contains NaN or infinity")
    return arr


def unit(vector: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """L2-normalised float32 copy (a zero vector stays zero)."""
    arr = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr.copy()


class VectorScroll(Protocol):
    """What :func:`vector_pages` reads through: a store, or a view of one in another process."""

    def scroll_vectors(
        self, fields: Sequence[str], offset: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32], str | None]: ...

    def yield_to_readers(self) -> int: ...

    def release_memory(self) -> None: ...


def vector_pages(
    source: VectorScroll, fields: Sequence[str], page_size: int = 1000
) -> Iterator[tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]]:
    """:meth:`VectorStore.iter_vector_pages` over any :class:`VectorScroll`: its pages in order, processes waiting
    for the store let in between two pages, the engine's memory given back every :data:`RELEASE_EVERY_VECTORS`
    points."""
    offset: str | None = None
    since_release = 0
    while True:
        ids, payloads, vectors, offset = source.scroll_vectors(fields, offset, page_size)
        if ids:
            yield ids, payloads, vectors
        if offset is None:
            return
        source.yield_to_readers()  # a long scan lets a waiting search in between two pages
        since_release += len(ids)
        if since_release >= RELEASE_EVERY_VECTORS:
            since_release = 0
            source.release_memory()


def vector_page(records: Iterable[Any]) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]:
    """Engine records -> ``(ids, payloads, unit-norm float32 rows)`` of those holding the unnamed vector."""
    ids: list[str] = []
    payloads: list[dict[str, Any]] = []
    rows: list[Any] = []
    for rec in records:
        vec: Any = rec.vector
        if isinstance(vec, dict):
            vec = vec.get("")
        if vec is not None:
            ids.append(str(rec.id))
            payloads.append(dict(rec.payload or {}))
            rows.append(vec)
    if not rows:
        return ids, payloads, np.zeros((0, 0), dtype=np.float32)
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return ids, payloads, matrix / norms


def vectors_by_id(records: Iterable[Any]) -> dict[str, npt.NDArray[np.float32]]:
    """Engine records (Qdrant Edge or qdrant-client) -> id: unit vector, of the unnamed vector; records without
    one are left out."""
    out: dict[str, npt.NDArray[np.float32]] = {}
    for rec in records:
        vec: Any = rec.vector
        if isinstance(vec, dict):
            vec = vec.get("")
        if vec is not None:
            out[str(rec.id)] = unit(vec)  # qdrant-client's local mode returns vectors as given
    return out


def stored_payload(payload: Mapping[str, Any], model_name: str) -> dict[str, Any]:
    """The payload as written: ``model`` filled in, ``dirs`` computed from ``path``."""
    out = dict(payload)
    out.setdefault(MODEL_KEY, model_name)
    path = out.get(PATH_KEY)
    if isinstance(path, str):
        out[DIRS_KEY] = ancestor_dirs(path)
    return out


def mismatch_message(where: str, found: CollectionInfo, model_name: str, vector_dim: int) -> str:
    return (
        f"{where} was built with model {found.model_name!r} ({found.vector_dim}-d vectors), "
        f"not with {model_name!r} ({vector_dim}-d); use the same model, or another collection "
        f"(--collection) for this one"
    )


class VectorStore(ABC):
    """A collection of image vectors in Qdrant (embedded Edge shard or server collection).

    Usage::

        with open_store(data_dir, None, "images", None) as store:
            store.ensure_collection(512, "clip-vit-b32")   # create, or check the model
            store.upsert(points)
            hits = store.search(query_vec, limit=10, path_prefix="/photos/2024")

    Every method except :meth:`describe`, :meth:`close` and :meth:`collection_info` needs
    :meth:`ensure_collection` (or :meth:`collection_info`) to have opened the collection first.
    Failures of the engine or of the server are raised as :class:`~clipindex.errors.StoreError`
    (or a subclass); bad arguments (wrong vector shape, non-UUID id) as ``ValueError``.
    """

    #: name of the collection
    collection: str

    # --- lifecycle ----------------------------------------------------------------------------

    @abstractmethod
    def ensure_collection(
        self, vector_dim: int, model_name: str, *, create: bool = True, record: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        """Open the collection, creating it (cosine distance, ``vector_dim``) on first use.

        ``record`` (the model's folder, name, dimension and sha256: :func:`clipindex.model.locate.model_record`) is
        kept with a collection this call creates, so that the model is known from the first point on
        (:meth:`model_record`). Raises CollectionMismatchError, before writing anything, when the existing
        collection was built with another model name or dimension; CollectionNotFoundError when it does not exist
        and ``create`` is False.
        """

    def model_record(self) -> dict[str, Any] | None:
        """The ``record`` kept when the collection was created, or None (not kept by this store, or unknown)."""
        return None

    @abstractmethod
    def collection_info(self) -> CollectionInfo:
        """Open the existing collection without knowing the model (status, inspection).

        Raises CollectionNotFoundError when nothing was ingested yet.
        """

    @abstractmethod
    def flush(self) -> None:
        """Make everything written so far durable (fsync for the embedded store)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the store. Idempotent."""

    def optimize(self) -> bool:
        """Run the storage engine's pending maintenance now (embedded store; a server optimises by itself).

        For the embedded store: seal an appendable segment grown past the engine's threshold into a compact,
        memory-mapped one, merge small segments, vacuum deleted points. Cheap when nothing is due (ingest calls
        it at every flush); seconds per 100k points otherwise. Returns True when something changed.
        """
        return False

    def release_memory(self) -> None:
        """Give back memory the engine holds for what was read so far; the store stays open.

        For the embedded store: a full read of the payloads (ingest's index) leaves the pages it touched mapped
        into the process, counted in its RSS although the kernel could reclaim them.
        Closing and reopening the shard unmaps them. Ingest calls it when it has images to embed, before the
        model loads. Nothing to do for a server.
        """
        return None

    def lend_to_readers(self) -> contextlib.AbstractContextManager[Lending]:
        """Around work that does not touch the store (a batch's inference): let processes that wait for the
        embedded store in while the work goes on, and take the store back at the end (see
        :meth:`EdgeStore.lend_to_readers`). A server serves everyone at once: nothing to do."""
        return contextlib.nullcontext(Lending())

    def yield_to_readers(self) -> int:
        """Between two batches of a long write: let processes waiting to read the store in, then go on.

        For the embedded store, which one process at a time may have open (:mod:`clipindex.store.turns`): when
        someone waits, flush, close, hand the store over and reopen it once it is ours again; one listing of an
        empty folder when nobody waits. Returns how many processes were let in. A server serves everyone at
        once: nothing to do.
        """
        return 0

    @abstractmethod
    def describe(self) -> str:
        """Where the store lives, for messages: a folder or a server URL, never an API key."""

    def damage_message(self, detail: str) -> str:
        """One line saying the store cannot serve what it holds (``detail``: what failed) and the way out."""
        return f"{self.describe()} cannot serve what it holds ({detail}); check the server's logs and storage"

    @property
    @abstractmethod
    def lock_path(self) -> Path:
        """The lock file an ingest into this store must hold (see :class:`clipindex.lock.IngestLock`)."""

    # --- data ---------------------------------------------------------------------------------

    @abstractmethod
    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points (same id = same point). Durable against a crash on return."""

    @abstractmethod
    def count(self, exact: bool = True) -> int:
        """Number of points: exact, or a fast estimate (may over-count after a crash)."""

    @abstractmethod
    def iter_payloads(
        self, fields: Sequence[str] | None = None, page_size: int = 1000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every ``(id, payload)``, in pages; only ``fields`` when given (else all but ``dirs``)."""

    @abstractmethod
    def scroll_vectors(
        self, fields: Sequence[str], offset: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32], str | None]:
        """One page of points in id order from ``offset`` (``None``: the first): ``(ids, payloads with only
        fields, (len(ids), vector_dim) unit-norm float32 vectors, the next page's offset or None at the end)``.
        Points without a vector are left out."""

    def iter_vector_pages(
        self, fields: Sequence[str], page_size: int = 1000
    ) -> Iterator[tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]]:
        """Every point once, a page at a time (:meth:`scroll_vectors`'s pages). The engine memory read so far is
        given back every :data:`RELEASE_EVERY_VECTORS` points, so a full read never holds the store in RSS, and
        processes waiting for the store are let in between two pages (:meth:`yield_to_readers`)."""
        return vector_pages(self, fields, page_size)

    @abstractmethod
    def get_vectors(self, ids: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Unit-norm float32 vectors of the points that exist among ``ids``."""

    @abstractmethod
    def get_payloads(self, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The ``fields`` of the payloads of the points that exist among ``ids``."""

    @abstractmethod
    def delete(self, ids: Iterable[str]) -> None:
        """Delete points by id (unknown ids are ignored)."""

    @abstractmethod
    def search(
        self,
        vector: npt.ArrayLike,
        limit: int = DEFAULT_LIMIT,
        score_threshold: float | None = None,
        path_prefix: str | None = None,
        filters: SearchFilter | None = None,
    ) -> list[Hit]:
        """The ``limit`` nearest points by cosine similarity, best first.

        ``score_threshold`` drops hits scoring below it; ``path_prefix`` keeps files under that
        folder (or that exact file): ``/a/photos`` never matches ``/a/photos2/...``; ``filters`` keeps the hits
        that meet all its conditions (dates, camera; the payload indexes serve them).
        """

    @abstractmethod
    def count_with(self, key: str) -> int:
        """Exact number of points whose payload has ``key`` (a keyword-indexed key, e.g. ``taken_at_source``)."""

    # --- status -------------------------------------------------------------------------------

    @abstractmethod
    def save_summary(self, summary: Mapping[str, Any]) -> None:
        """Remember a small JSON object (the last ingest's summary) with the collection."""

    @abstractmethod
    def load_summary(self) -> dict[str, Any] | None:
        """The last object given to :meth:`save_summary`, or None."""

    # --- context manager ----------------------------------------------------------------------

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


def require_open(opened: bool, store: VectorStore) -> None:
    if not opened:
        raise StoreError(f"{store.describe()}: the collection is not open (call ensure_collection first)")
