"""The warm state behind ``clipindex serve``: one embedder, one store, one thumbnail cache, and the operations the
routes call. The routes only translate HTTP to these calls and their typed errors to status codes.

* The text tower loads in :meth:`SearchService.warm` (before the server accepts requests); the vision tower on
  the first image query. The store is read in a child process (:class:`~clipindex.web.storeproc.StoreProcess`,
  started before anything else, so the engine's GIL holds never stall the server), opened once and kept open
  between requests, and handed to a cron ingest or a ``clipindex status`` whenever one waits for it.
* Searches are :func:`clipindex.ops.search.search_vector` on the query's vector, the same call ``clipindex search``
  makes, so ranks and scores equal the CLI's. The query is embedded outside the store's lock: concurrent requests
  embed in parallel and only take turns on the store.
* Files are only ever named by the store: a thumbnail or an image is asked for by point id, and the path comes
  from that point's payload. An id seen in a recent result needs no store read.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import mimetypes
import os
import posixpath
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipindex.errors import ImageError, PointNotFoundError
from clipindex.images.inputs import load_input
from clipindex.model.encode import Embedder
from clipindex.model.locate import ModelLocation
from clipindex.ops.results import SearchResult, truncation_warning
from clipindex.settings import DEFAULT_LIMIT, DEFAULT_THUMBNAIL_SIZE
from clipindex.store.base import CollectionInfo, SearchFilter, VectorStore, check_id, vector_pages
from clipindex.web.storeproc import StoreProcess
from clipindex.web.thumbnails import Thumbnail, ThumbnailCache

if TYPE_CHECKING:
    from clipindex.ops.duplicates import DuplicateReport

__all__ = ["FileRef", "SearchOutcome", "SearchService", "Where", "decode_base64_image", "thumbnail_url"]

#: ids of recent results whose file is remembered (no store read for their thumbnails)
RECENT_POINTS = 50_000
_FILE_FIELDS = ("path", "sha256", "format")


@dataclass(frozen=True)
class FileRef:
    """Where an indexed point's file is, as its payload says."""

    path: str
    sha256: str
    format: str | None


@dataclass(frozen=True)
class Where:
    """When and with what (``clipindex search --after/--before/--camera/--sort``): ``after``/``before`` as
    :func:`clipindex.dates.parse_when` reads them (ValueError otherwise), ``camera`` as words of the EXIF make
    or model, ``sort`` ``score`` or ``date``."""

    after: str | None = None
    before: str | None = None
    camera: str | None = None
    sort: Literal["score", "date"] = "score"

    def filters(self) -> SearchFilter | None:
        from clipindex.dates import parse_when

        def when(text: str | None, name: str) -> float | None:
            if text is None or not text.strip():
                return None
            try:
                return parse_when(text)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None

        camera = " ".join(self.camera.lower().split()) if self.camera else None
        found = SearchFilter(when(self.after, "after"), when(self.before, "before"), camera or None)
        return None if found.empty else found


@dataclass(frozen=True)
class SearchOutcome:
    results: list[SearchResult]
    took_ms: float
    warnings: list[str] = field(default_factory=list)


def thumbnail_url(point_id: str, sha256: str | None, size: int = DEFAULT_THUMBNAIL_SIZE) -> str:
    """The thumbnail's URL path; ``v`` names the file's content, so a browser may cache it for good."""
    version = f"&v={sha256[:16]}" if sha256 else ""
    return f"/api/v1/thumbnails/{point_id}?size={size}{version}"


def decode_base64_image(text: str) -> bytes:
    """The bytes of a base64 image (plain, or a ``data:`` URI); ImageError when it is not base64."""
    body = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        data = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("<image>", "not valid base64: send the image's bytes base64-encoded") from None
    if not data:
        raise ImageError("<image>", "empty (0 bytes)")
    return data


def _folder(folder: str | None) -> str | None:
    """A folder filter, normalised without touching the disk; it must be absolute (paths are stored that way)."""
    if folder is None or folder == "":
        return None
    if "\x00" in folder or not os.path.isabs(folder):
        raise ValueError("folder must be an absolute path, e.g. /home/me/Pictures")
    return posixpath.normpath(folder) if os.sep == "/" else os.path.normpath(folder)


class SearchService:
    """The operations of the API, over one embedder and one store (``close()`` when done)."""

    def __init__(self, store: VectorStore, embedder: Embedder, location: ModelLocation, thumbnails: ThumbnailCache):
        self.reader = StoreProcess(store)
        self.embedder = embedder
        self.location = location
        self.thumbnails = thumbnails
        self._recent: OrderedDict[str, FileRef] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._duplicates_lock = threading.Lock()
        self._last_duplicates: tuple[tuple[float, str | None], float, DuplicateReport] | None = None

    @property
    def store(self) -> VectorStore:
        """The store, as described to users (it is opened in the reader process only)."""
        return self.reader.store

    def warm(self) -> None:
        """Load the tokenizer and the text tower, and open the store's collection when there is one."""
        self.embedder.encode_text(["a photo"])
        with contextlib.suppress(Exception):  # reported by the first request that needs the store, with its own
            self.reader.call("open")

    def close(self) -> None:
        self.reader.close()

    # --- searches ---------------------------------------------------------------------------------------------

    def _search(
        self,
        vector: np.ndarray,
        *,
        limit: int,
        offset: int,
        min_score: float | None,
        folder: str | None,
        where: Where | None = None,
    ) -> list[SearchResult]:
        prefix = _folder(folder)
        where = where or Where()
        options = {
            "limit": offset + limit,
            "threshold": min_score,
            "path_prefix": prefix,
            "model_name": self.embedder.model_name,
            "filters": where.filters(),
            "sort": where.sort,
        }
        found: list[SearchResult] = self.reader.call("search", np.asarray(vector, dtype=np.float32), options)
        page = found[offset:]
        self._remember(page)
        return page

    def _remember(self, results: Sequence[SearchResult]) -> None:
        with self._recent_lock:
            for r in results:
                sha = r.payload.get("sha256")
                if isinstance(sha, str) and r.path:
                    fmt = r.payload.get("format")
                    self._recent[r.id] = FileRef(r.path, sha, fmt if isinstance(fmt, str) else None)
                    self._recent.move_to_end(r.id)
            while len(self._recent) > RECENT_POINTS:
                self._recent.popitem(last=False)

    def _embed_upload(self, data: bytes, name: str) -> np.ndarray:
        """The vector of an uploaded image, decoded and preprocessed exactly as ingest does (its pixel limit and
        checks); ImageError naming ``name`` when the bytes are not a readable image."""
        preprocessor = self.embedder.preprocessor
        image = load_input(bytes(data), preprocessor, name=name)
        vector: np.ndarray = self.embedder.encode_pixels(preprocessor.preprocess(image)[None])[0]
        return vector

    def _point_vector(self, point_id: str) -> np.ndarray:
        """An indexed point's stored vector; PointNotFoundError for any other id."""
        canonical = _point_id(point_id)
        vector: np.ndarray | None = self.reader.call("vector", canonical)
        if vector is None:
            raise PointNotFoundError(f"no indexed image has the id {canonical}")
        return vector

    def search_text(
        self,
        text: str,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        min_score: float | None = None,
        folder: str | None = None,
        where: Where | None = None,
    ) -> SearchOutcome:
        started = time.perf_counter()
        if not text.strip():
            raise ValueError("the query is empty")
        warnings: list[str] = []

        def truncated(_text: str) -> None:
            warnings.append(truncation_warning(self.embedder.manifest.context_length))

        vector = self.embedder.encode_text([text], on_truncate=truncated)[0]
        results = self._search(vector, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        return SearchOutcome(results, _ms_since(started), warnings)

    def search_image(
        self,
        data: bytes,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        min_score: float | None = None,
        folder: str | None = None,
        where: Where | None = None,
    ) -> SearchOutcome:
        """Images like an uploaded one: decoded and preprocessed exactly as ingest does (its pixel limit and
        checks); ImageError when the bytes are not a readable image."""
        started = time.perf_counter()
        vector = self._embed_upload(data, "the uploaded image")
        results = self._search(vector, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        return SearchOutcome(results, _ms_since(started))

    def search_point(
        self,
        point_id: str,
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        min_score: float | None = None,
        folder: str | None = None,
        where: Where | None = None,
    ) -> SearchOutcome:
        """ "More like this": the images nearest to an indexed point's stored vector (itself first)."""
        started = time.perf_counter()
        vector = self._point_vector(point_id)
        results = self._search(vector, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        return SearchOutcome(results, _ms_since(started))

    def search_combined(
        self,
        terms: Sequence[tuple[tuple[str, Any], float, int]],
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        min_score: float | None = None,
        folder: str | None = None,
        where: Where | None = None,
    ) -> SearchOutcome:
        """Query arithmetic (:mod:`clipindex.ops.query`): ``((kind, value), weight, sign)`` per term, ``kind``
        ``text``, ``image_id`` (an indexed point's stored vector) or ``image`` (bytes, decoded as ingest does)."""
        from clipindex.ops.query import QueryTerm, combine_terms

        started = time.perf_counter()
        vectors: list[np.ndarray] = []
        signed: list[QueryTerm] = []
        for (kind, value), weight, sign in terms:
            if kind == "text":
                vectors.append(self.embedder.encode_text([str(value)])[0])
            elif kind == "image_id":
                vectors.append(self._point_vector(str(value)))
            else:
                vectors.append(self._embed_upload(value, "an uploaded image"))
            signed.append(QueryTerm("text", "term", weight, sign))  # the kind does not enter the sum
        vector = combine_terms(vectors, signed)
        results = self._search(vector, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        return SearchOutcome(results, _ms_since(started))

    def search_embedding(
        self,
        values: Sequence[float],
        *,
        limit: int = DEFAULT_LIMIT,
        offset: int = 0,
        min_score: float | None = None,
        folder: str | None = None,
        where: Where | None = None,
    ) -> SearchOutcome:
        started = time.perf_counter()
        with np.errstate(over="ignore"):  # values past float32's range become inf, refused below
            vector = np.asarray(values, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.embedder.dimension:
            raise ValueError(f"the embedding has {vector.shape[0]} values, the model {self.embedder.dimension}")
        if not np.all(np.isfinite(vector)) or not float(np.linalg.norm(vector)) > 0:
            raise ValueError("the embedding must be finite and not all zero")
        results = self._search(vector, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        return SearchOutcome(results, _ms_since(started))

    # --- duplicates -----------------------------------------------------------------------------------------------

    def duplicates(self, *, min_similarity: float, folder: str | None = None) -> DuplicateReport:
        """:func:`clipindex.ops.duplicates.find_duplicates` over the store, read a page per store-process call (a
        search waits for one page, never for the whole scan). One scan runs at a time; a request that waited for
        a scan with the same arguments that started after it arrived gets that scan's report."""
        from clipindex.ops.duplicates import find_duplicates

        key = (float(min_similarity), _folder(folder))
        asked = time.monotonic()
        with self._duplicates_lock:
            last = self._last_duplicates
            if last is not None and last[0] == key and last[1] >= asked:
                return last[2]
            started = time.monotonic()
            report = find_duplicates(_ReaderView(self.reader), min_similarity=key[0], path_prefix=key[1])
            self._last_duplicates = (key, started, report)
            return report

    # --- status, files ------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``clipindex status --json`` prints for this store and model."""
        report: dict[str, Any] = self.reader.call("report", self.location)
        return report

    def file_of(self, point_id: str) -> FileRef:
        """The file of an indexed point, from its payload; PointNotFoundError for any other id."""
        canonical = _point_id(point_id)
        with self._recent_lock:
            known = self._recent.get(canonical)
        if known is not None:
            return known

        found: dict[str, Any] | None = self.reader.call("payload", canonical, _FILE_FIELDS)
        path = found.get("path") if found else None
        sha = found.get("sha256") if found else None
        if not isinstance(path, str) or not path:
            raise PointNotFoundError(f"no indexed image has the id {canonical}")
        fmt = found.get("format") if found else None
        return FileRef(path, sha if isinstance(sha, str) else "", fmt if isinstance(fmt, str) else None)

    def thumbnail(self, point_id: str, size: int = DEFAULT_THUMBNAIL_SIZE) -> Thumbnail:
        ref = self.file_of(point_id)
        try:
            return self.thumbnails.get(_point_id(point_id), ref.sha256, ref.path, size)
        except ImageError as exc:
            raise PointNotFoundError(f"the file of {point_id} cannot be read now: {exc}") from exc

    def image(self, point_id: str) -> tuple[str, str]:
        """``(path, media type)`` of an indexed point's file, when it is still a regular file."""
        ref = self.file_of(point_id)
        if not os.path.isfile(ref.path):
            raise PointNotFoundError(f"the file of {point_id} is gone (re-run ingest with --prune)")
        media = mimetypes.guess_type(ref.path)[0] or "application/octet-stream"
        return ref.path, media


class _ReaderView:
    """The store as :func:`~clipindex.ops.duplicates.find_duplicates` reads it: every call one request to the
    store process, a scan a page at a time."""

    def __init__(self, reader: StoreProcess, page_size: int = 2000) -> None:
        self.reader = reader
        self.collection = reader.store.collection
        self.page_size = page_size

    def describe(self) -> str:
        return self.reader.store.describe()

    def collection_info(self) -> CollectionInfo:
        info: CollectionInfo = self.reader.call("info")[0]
        return info

    def count(self, exact: bool = True) -> int:
        count: int = self.reader.call("info")[1]
        return count

    def scroll_vectors(
        self, fields: Sequence[str], offset: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], list[dict[str, Any]], np.ndarray, str | None]:
        page: tuple[list[str], list[dict[str, Any]], np.ndarray, str | None] = self.reader.call(
            "scroll_vectors", tuple(fields), offset, page_size
        )
        return page

    def iter_vector_pages(
        self, fields: Sequence[str], page_size: int = 1000
    ) -> Iterator[tuple[list[str], list[dict[str, Any]], np.ndarray]]:
        return vector_pages(self, fields, self.page_size)

    def release_memory(self) -> None:
        self.reader.call("release")

    def yield_to_readers(self) -> int:
        return 0  # the store process hands the store over between any two calls

    def get_vectors(self, ids: Iterable[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = self.reader.call("vectors", list(ids))
        return found

    def get_payloads(self, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.reader.call("payloads", list(ids), tuple(fields))
        return found


def _point_id(point_id: str) -> str:
    try:
        return check_id(point_id)
    except ValueError:
        raise PointNotFoundError("no indexed image has this id (ids are UUIDs)") from None


def _ms_since(started: float) -> float:
    took = (time.perf_counter() - started) * 1000
    return round(took, 3) if math.isfinite(took) else 0.0
