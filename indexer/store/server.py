"""The server store: a collection on a Qdrant server, through qdrant-client.

``qdrant_client`` takes about a second to import, so this module imports it only inside the
methods that talk to a server: ``import clipindex.store`` stays cheap for the embedded default.

* Construction never touches the network. :meth:`ServerStore.ensure_collection` is the first call.
* Transient failures (connection refused or reset, timeouts, HTTP 408/429/502/503/504, gRPC
  UNAVAILABLE) are retried with exponential backoff (0.2 s doubling to 5 s) for at most
  ``timeout_s`` seconds in all, per call (plus one request timeout), then raise
  :class:`~clipindex.errors.StoreUnavailableError` with a one-line message naming the URL. Messages
  never contain the API key (the URL is shown without credentials or query string).
* Every call is idempotent (upserts and deletes by id), so a retry after a lost reply is safe;
  a ``create_collection`` that already happened is detected and verified.
* The model name and dimension live in the collection-level ``metadata`` (Qdrant >= 1.16, kept by
  qdrant-client's local mode too) under ``clipindex_*`` keys, with a fall-back on the config's
  vector size and the ``"model"`` payload of one stored point for servers or collections without
  it. The last ingest summary goes to the same metadata (``clipindex_last_ingest``), or to a file
  in the local state folder when the server does not keep metadata.
* ``shards``/``replicas`` are passed to ``create_collection`` (ignored in local mode), with the vector storage of
  ``settings`` (:class:`~clipindex.store.sizing.CollectionSettings`: int8 quantization in RAM, float32 originals on
  disk, HNSW ``m=16``/``ef_construct=100`` unless overridden); searches then rescore the int8 candidates.
* An API key sent over plain ``http://`` to a host other than localhost triggers an
  :class:`InsecureApiKeyWarning` (and ``on_warning`` when given): the key would travel in clear.
* Tests run it on ``QdrantClient(path=...)`` or ``QdrantClient(":memory:")`` (local mode: same API,
  no payload indexes, brute-force search).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from clipindex.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from clipindex.lock import server_lock_path
from clipindex.settings import DEFAULT_COLLECTION, DEFAULT_LIMIT, DEFAULT_TIMEOUT_S, default_state_dir
from clipindex.store.base import (
    CAMERA_KEY,
    DIRS_KEY,
    FLOAT_INDEXED_KEYS,
    INDEXED_KEYS,
    INTERNAL_KEYS,
    META_FORMAT,
    MODEL_KEY,
    PATH_KEY,
    TAKEN_TS_KEY,
    UNKNOWN_MODEL,
    CollectionInfo,
    Hit,
    Point,
    SearchFilter,
    VectorStore,
    as_vector,
    check_id,
    mismatch_message,
    normalize_prefix,
    require_open,
    stored_payload,
    vector_page,
    vectors_by_id,
)
from clipindex.store.sizing import CollectionSettings

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

__all__ = ["InsecureApiKeyWarning", "ServerStore", "safe_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

META_MODEL = "clipindex_model"
META_DIM = "clipindex_vector_dim"
META_FORMAT_KEY = "clipindex_format"
META_CREATED = "clipindex_created_at"
META_SUMMARY = "clipindex_last_ingest"

#: until the server has answered once, a call still running after this many seconds is announced as a wait (a
#: server that accepts connections but does not answer would otherwise be silent for a whole request timeout)
WAIT_NOTICE_S = 1.0

_TRANSIENT_HTTP = frozenset({408, 429, 502, 503, 504})
_AUTH_HTTP = frozenset({401, 403})
_RETRIEVE_CHUNK = 1000


def _permanent_failure(e: BaseException) -> str | None:
    """Why a connection failure cannot be cured by waiting (a host name that does not resolve, a TLS
    certificate that does not verify), found in the exception's chain; None for a transient one."""
    import socket
    import ssl

    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return (
                f"TLS certificate verification failed ({cur.verify_message or cur.reason}); check the URL's host name"
            )
        if isinstance(cur, socket.gaierror) and cur.errno in _UNRESOLVABLE:
            return "the host name does not resolve (no such host); check the URL"
        text = str(cur)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return "TLS certificate verification failed; check the URL's host name"
        if "Name or service not known" in text or "nodename nor servname provided" in text:
            return "the host name does not resolve (no such host); check the URL"
        cur = cur.__cause__ or cur.__context__ or getattr(cur, "source", None)
    return None


def _unresolvable_codes() -> frozenset[int]:
    import socket

    codes = {socket.EAI_NONAME}
    nodata = getattr(socket, "EAI_NODATA", None)
    if nodata is not None:
        codes.add(nodata)
    return frozenset(codes)


#: getaddrinfo errors that mean "no such host" (EAI_AGAIN, a temporary DNS failure, is retried)
_UNRESOLVABLE = _unresolvable_codes()


class InsecureApiKeyWarning(UserWarning):
    """An API key would be sent in clear text (plain http to a non-local host)."""


def safe_url(url: str) -> str:
    """``url`` without user:password, query string or fragment: safe to print."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    netloc = parts.netloc.rpartition("@")[2].lower()  # drop user:password
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _is_local_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerStore(VectorStore):
    """A collection on a Qdrant server (or on a given ``QdrantClient``, e.g. local mode).

    ``ServerStore("http://qdrant:6333", "images", api_key)`` builds its own client (REST, or gRPC
    with ``prefer_grpc``); ``ServerStore(client=QdrantClient(path=tmp), collection="images")`` uses
    the given one (and leaves it open on :meth:`close`).
    """

    def __init__(
        self,
        url: str | None = None,
        collection: str = DEFAULT_COLLECTION,
        api_key: str | None = None,
        *,
        client: QdrantClient | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        request_timeout_s: float = 10.0,
        shards: int | None = None,
        replicas: int | None = None,
        settings: CollectionSettings | None = None,
        prefer_grpc: bool = False,
        state_dir: Path | None = None,
        on_warning: Callable[[str], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("give exactly one of url and client")
        if not collection:
            raise ValueError("collection must not be empty")
        if timeout_s <= 0 or request_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        self.collection = collection
        self.timeout_s = float(timeout_s)
        self.shards = shards
        self.replicas = replicas
        #: vector storage of a collection this store creates (quantization, HNSW; :mod:`clipindex.store.sizing`)
        self.settings = settings if settings is not None else CollectionSettings()
        self._state_dir = state_dir
        self._secret = api_key or None
        self._opened = False
        self._info: CollectionInfo | None = None
        self._metadata_supported = True
        #: told once, at the first failed attempt, that calls are being retried (cron logs see the wait at once)
        self._on_wait = on_wait
        self._wait_told = False
        self._wait_lock = threading.Lock()
        self._answered = False
        if client is not None:
            self._client = client
            self._owns_client = False
            self._url = self._client_url(client)
            self._lock_key = f"memory://{id(client)}" if self._url.endswith("(:memory:)") else self._url
            return

        assert url is not None
        full = url if "://" in url else f"http://{url}"
        parts = urlsplit(full)
        if parts.scheme not in ("http", "https"):
            raise StoreError(f"unsupported Qdrant URL scheme {parts.scheme!r} in {safe_url(full)}")
        self._url = self._lock_key = safe_url(full)
        try:
            host = parts.hostname or ""
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise StoreError(f"invalid Qdrant URL {self._url}: bad port") from None
        if api_key and parts.scheme == "http" and not _is_local_host(host):
            msg = (
                f"the API key would be sent in clear text to {self._url}; "
                f"use https:// (or reach the server through a tunnel)"
            )
            warnings.warn(InsecureApiKeyWarning(msg), stacklevel=2)
            if on_warning is not None:
                on_warning(msg)

        from qdrant_client import QdrantClient

        with warnings.catch_warnings():
            # our own, clearer warning above replaces qdrant-client's
            warnings.filterwarnings("ignore", message="Api key is used with an insecure connection")
            self._client = QdrantClient(
                url=full,
                api_key=api_key,
                timeout=max(1, math.ceil(min(request_timeout_s, timeout_s))),
                prefer_grpc=prefer_grpc,
                check_compatibility=False,
            )
        self._owns_client = True

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def is_local_mode(self) -> bool:
        return type(getattr(self._client, "_client", None)).__name__ == "QdrantLocal"

    def describe(self) -> str:
        return f"{self._url}, collection {self.collection!r}"

    @property
    def lock_path(self) -> Path:
        path = self._client.init_options.get("path") if not self._owns_client else None
        if isinstance(path, str):
            return Path(path) / f"clipindex-{self.collection}.lock"
        return server_lock_path(self._lock_key, self.collection, self._state_dir)

    def ensure_collection(
        self, vector_dim: int, model_name: str, *, create: bool = True, record: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        if vector_dim <= 0:
            raise ValueError(f"vector_dim must be positive, not {vector_dim}")
        if not model_name:
            raise ValueError("model_name must not be empty")
        if self._opened and self._info is not None:
            if self._info.model_name == UNKNOWN_MODEL and self._info.vector_dim == vector_dim:
                self._info = CollectionInfo(model_name=model_name, vector_dim=vector_dim)
                self._try_set_metadata(self._meta(model_name, vector_dim))
            self._check(self._info, vector_dim, model_name)
            return self._info

        name = self.collection
        exists = self._call("check the collection", lambda: self._client.collection_exists(name))
        if not exists:
            if not create:
                raise self._not_found()
            created = self._create(vector_dim, model_name)
            if created:
                info = CollectionInfo(model_name=model_name, vector_dim=vector_dim, created=True)
                self._opened, self._info = True, info
                log.info("created %s for %s (%d-d)", self.describe(), model_name, vector_dim)
                return info

        found, from_metadata = self._read_info(fallback_model=model_name)
        self._check(found, vector_dim, model_name)  # nothing written before this check
        if not from_metadata:
            self._try_set_metadata(self._meta(model_name, vector_dim))
        self._ensure_indexes()
        self._opened, self._info = True, found
        return found

    def collection_info(self) -> CollectionInfo:
        if self._opened and self._info is not None:
            return self._info
        name = self.collection
        if not self._call("check the collection", lambda: self._client.collection_exists(name)):
            raise self._not_found()
        info, _ = self._read_info(fallback_model=None)
        self._opened, self._info = True, info
        return info

    def flush(self) -> None:
        """Nothing to do: every write waits for the server to apply it (``wait=True``)."""
        require_open(self._opened, self)

    def close(self) -> None:
        self._opened, self._info = False, None
        if self._owns_client:
            try:
                self._client.close()
            except Exception as e:  # closing never matters enough to fail
                log.debug("closing the client of %s: %s", self._url, e)

    # --- data ---------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        require_open(self._opened, self)
        assert self._info is not None
        if not points:
            return
        from qdrant_client import models

        dim, model = self._info.vector_dim, self._info.model_name
        batch = [
            models.PointStruct(
                id=check_id(p.id),
                vector=as_vector(p.vector, dim).tolist(),
                payload=stored_payload(p.payload, model),
            )
            for p in points
        ]
        name = self.collection
        self._call("upsert", lambda: self._client.upsert(name, points=batch, wait=True))

    def count(self, exact: bool = True) -> int:
        require_open(self._opened, self)
        name = self.collection
        result = self._call("count", lambda: self._client.count(name, exact=exact))
        return int(result.count)

    def count_with(self, key: str) -> int:
        require_open(self._opened, self)
        from qdrant_client import models

        name = self.collection
        flt = models.Filter(must_not=[models.IsEmptyCondition(is_empty=models.PayloadField(key=key))])
        result = self._call("count", lambda: self._client.count(name, count_filter=flt, exact=True))
        return int(result.count)

    def iter_payloads(
        self, fields: Sequence[str] | None = None, page_size: int = 1000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        require_open(self._opened, self)
        from qdrant_client import models

        selector: bool | models.PayloadSelectorInclude | models.PayloadSelectorExclude
        if fields is None:
            selector = models.PayloadSelectorExclude(exclude=list(INTERNAL_KEYS))
        elif fields:
            selector = models.PayloadSelectorInclude(include=list(fields))
        else:
            selector = False
        name = self.collection
        offset: Any = None
        while True:
            records, offset = self._call(
                "scroll",
                partial(
                    self._client.scroll,
                    name,
                    limit=page_size,
                    offset=offset,
                    with_payload=selector,
                    with_vectors=False,
                ),
            )
            for rec in records:
                yield str(rec.id), dict(rec.payload or {})
            if offset is None:
                return

    def scroll_vectors(
        self, fields: Sequence[str], offset: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32], str | None]:
        require_open(self._opened, self)
        from qdrant_client import models

        selector: bool | models.PayloadSelectorInclude = (
            models.PayloadSelectorInclude(include=list(fields)) if fields else False
        )
        start: Any = None if offset is None else check_id(offset)
        records, after = self._call(
            "scroll",
            partial(
                self._client.scroll,
                self.collection,
                limit=page_size,
                offset=start,
                with_payload=selector,
                with_vectors=True,
            ),
        )
        ids, payloads, vectors = vector_page(records)
        return ids, payloads, vectors, None if after is None else str(after)

    def _retrieve(self, ids: Iterable[str], *, with_payload: bool | list[str], with_vectors: bool) -> Iterator[Any]:
        """The records of the points that exist among ``ids``, read a chunk at a time."""
        require_open(self._opened, self)
        wanted = [check_id(i) for i in ids]
        name = self.collection
        for start in range(0, len(wanted), _RETRIEVE_CHUNK):
            chunk: list[Any] = wanted[start : start + _RETRIEVE_CHUNK]
            yield from self._call(
                "retrieve",
                partial(self._client.retrieve, name, ids=chunk, with_payload=with_payload, with_vectors=with_vectors),
            )

    def get_vectors(self, ids: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
        return vectors_by_id(self._retrieve(ids, with_payload=False, with_vectors=True))

    def get_payloads(self, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {
            str(rec.id): dict(rec.payload or {})
            for rec in self._retrieve(ids, with_payload=list(fields), with_vectors=False)
        }

    def delete(self, ids: Iterable[str]) -> None:
        require_open(self._opened, self)
        from qdrant_client import models

        wanted: list[Any] = [check_id(i) for i in ids]
        if not wanted:
            return
        name = self.collection
        selector = models.PointIdsList(points=wanted)
        self._call("delete", lambda: self._client.delete(name, points_selector=selector, wait=True))

    def search(
        self,
        vector: npt.ArrayLike,
        limit: int = DEFAULT_LIMIT,
        score_threshold: float | None = None,
        path_prefix: str | None = None,
        filters: SearchFilter | None = None,
    ) -> list[Hit]:
        require_open(self._opened, self)
        assert self._info is not None
        from qdrant_client import models

        query = as_vector(vector, self._info.vector_dim).tolist()
        if limit <= 0:
            return []
        flt: models.Filter | None = None
        should: list[Any] | None = None
        must: list[Any] = []
        if path_prefix is not None:
            p = normalize_prefix(path_prefix)
            should = [
                models.FieldCondition(key=DIRS_KEY, match=models.MatchValue(value=p)),
                models.FieldCondition(key=PATH_KEY, match=models.MatchValue(value=p)),
            ]
        if filters is not None:
            if filters.after is not None or filters.before is not None:
                bounds = models.Range(gte=filters.after, lt=filters.before)
                must.append(models.FieldCondition(key=TAKEN_TS_KEY, range=bounds))
            if filters.camera is not None:
                must.append(models.FieldCondition(key=CAMERA_KEY, match=models.MatchValue(value=filters.camera)))
        if should is not None or must:
            flt = models.Filter(should=should, must=must or None)
        name = self.collection
        response = self._call(
            "search",
            lambda: self._client.query_points(
                name,
                query=query,
                limit=limit,
                query_filter=flt,
                score_threshold=score_threshold,
                with_payload=models.PayloadSelectorExclude(exclude=list(INTERNAL_KEYS)),
                with_vectors=False,
                search_params=None if self.is_local_mode else self.settings.search_params(),
            ),
        )
        return [Hit(id=str(s.id), score=float(s.score), payload=dict(s.payload or {})) for s in response.points]

    # --- status -------------------------------------------------------------------------------

    def save_summary(self, summary: Mapping[str, Any]) -> None:
        data = json.loads(json.dumps(dict(summary)))  # JSON-only, detached copy
        if self._metadata_supported and self._try_set_metadata({META_SUMMARY: data}):
            return
        path = self._summary_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            tmp.replace(path)
        except OSError as e:
            raise StoreError(f"cannot write {path}: {e.strerror or e}") from e

    def load_summary(self) -> dict[str, Any] | None:
        name = self.collection
        if self._call("check the collection", lambda: self._client.collection_exists(name)):
            col = self._call("read the collection", lambda: self._client.get_collection(name))
            value = (col.config.metadata or {}).get(META_SUMMARY)
            if isinstance(value, dict):
                return value
        try:
            data = json.loads(self._summary_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    # --- internals ----------------------------------------------------------------------------

    @staticmethod
    def _client_url(client: QdrantClient) -> str:
        opts = client.init_options
        if opts.get("location") == ":memory:":
            return "qdrant-client local mode (:memory:)"
        if opts.get("path"):
            return f"qdrant-client local mode ({opts['path']})"
        if opts.get("url"):
            return safe_url(str(opts["url"]))
        if opts.get("host"):
            scheme = "https" if opts.get("https") else "http"
            return safe_url(f"{scheme}://{opts['host']}:{opts.get('port') or 6333}")
        if opts.get("location"):
            return safe_url(str(opts["location"]))
        return "qdrant server (given client)"

    def _summary_file(self) -> Path:
        lock = server_lock_path(self._lock_key, self.collection, self._state_dir or default_state_dir())
        return lock.parent.parent / "summaries" / lock.name.replace(".lock", ".json")

    def _not_found(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"no collection {self.collection!r} on {self._url} yet (nothing was ingested there); "
            f"run an ingest first or check --qdrant-url/--collection"
        )

    def _check(self, found: CollectionInfo, vector_dim: int, model_name: str) -> None:
        if found.vector_dim != vector_dim or found.model_name != model_name:
            where = f"collection {self.collection!r} on {self._url}"
            raise CollectionMismatchError(mismatch_message(where, found, model_name, vector_dim))

    @staticmethod
    def _meta(model_name: str, vector_dim: int) -> dict[str, Any]:
        return {
            META_MODEL: model_name,
            META_DIM: vector_dim,
            META_FORMAT_KEY: META_FORMAT,
            META_CREATED: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def _create(self, vector_dim: int, model_name: str) -> bool:
        """Create the collection; False when it turned out to exist already (lost reply, race)."""
        from qdrant_client import models
        from qdrant_client.http.exceptions import UnexpectedResponse

        name = self.collection
        vectors = models.VectorParams(size=vector_dim, distance=models.Distance.COSINE)
        extra: dict[str, Any] = {}
        if not self.is_local_mode:
            if self.shards is not None:
                extra["shard_number"] = self.shards
            if self.replicas is not None:
                extra["replication_factor"] = self.replicas
            extra.update(self.settings.create_kwargs(vector_dim))
            vectors = extra.pop("vectors_config")
        meta = self._meta(model_name, vector_dim)

        def create(with_meta: bool) -> Any:
            kwargs = dict(extra, metadata=meta) if with_meta else extra
            return self._client.create_collection(name, vectors_config=vectors, **kwargs)

        try:
            self._call("create the collection", lambda: create(True))
        except StoreUnavailableError:
            raise
        except StoreError as e:
            cause = e.__cause__
            if "already exists" in str(cause):  # lost reply or a concurrent creator (local mode too)
                return False
            if not isinstance(cause, UnexpectedResponse) or cause.status_code not in (400, 409, 422):
                raise
            if cause.status_code == 409 or b"already exists" in (cause.content or b""):
                return False
            if b"metadata" not in (cause.content or b""):
                raise
            log.warning("%s does not keep collection metadata: the model is checked on points", self._url)
            self._metadata_supported = False
            self._call("create the collection", lambda: create(False))
        self._ensure_indexes()
        return True

    def _read_info(self, fallback_model: str | None) -> tuple[CollectionInfo, bool]:
        """(model and dimension of the existing collection, whether they came from its metadata)."""
        from qdrant_client import models

        name = self.collection
        col = self._call("read the collection", lambda: self._client.get_collection(name))
        params = col.config.params.vectors
        if isinstance(params, dict):
            params = params.get("")
        if not isinstance(params, models.VectorParams):
            raise CollectionMismatchError(
                f"collection {name!r} on {self._url} uses named vectors: it was not made by clipindex; "
                f"use another collection (--collection)"
            )
        if params.distance != models.Distance.COSINE:
            raise CollectionMismatchError(
                f"collection {name!r} on {self._url} uses {params.distance.value} distance, not Cosine: "
                f"it was not made by clipindex; use another collection (--collection)"
            )
        dim = int(params.size)
        meta = col.config.metadata or {}
        model = meta.get(META_MODEL)
        if isinstance(model, str) and model:
            return CollectionInfo(model_name=model, vector_dim=dim), True
        records, _ = self._call(
            "scroll",
            lambda: self._client.scroll(name, limit=1, with_payload=[MODEL_KEY], with_vectors=False),
        )
        model = records[0].payload.get(MODEL_KEY) if records and records[0].payload else None
        if not isinstance(model, str) or not model:
            model = fallback_model or UNKNOWN_MODEL
        return CollectionInfo(model_name=model, vector_dim=dim), False

    def _try_set_metadata(self, metadata: dict[str, Any]) -> bool:
        name = self.collection
        try:
            self._call(
                "update the collection metadata",
                partial(self._client.update_collection, name, metadata=metadata),
            )
        except StoreUnavailableError:
            raise
        except (StoreError, TypeError, ValueError) as e:
            log.info("%s did not keep collection metadata (%s)", self._url, e)
            self._metadata_supported = False
            return False
        return True

    def _ensure_indexes(self) -> None:
        if self.is_local_mode:
            return  # payload indexes have no effect in local mode (and it warns about them)
        from qdrant_client import models

        name = self.collection
        col = self._call("read the collection", lambda: self._client.get_collection(name))
        kinds = [(key, models.PayloadSchemaType.KEYWORD) for key in INDEXED_KEYS]
        kinds += [(key, models.PayloadSchemaType.FLOAT) for key in FLOAT_INDEXED_KEYS]
        for key, kind in kinds:
            if key not in (col.payload_schema or {}):
                self._call(
                    "create a payload index",
                    partial(
                        self._client.create_payload_index,
                        name,
                        key,
                        field_schema=kind,
                        wait=True,
                    ),
                )

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return " ".join(text.split())[:300]

    def _classify(self, e: BaseException) -> tuple[str, str]:
        """("transient" | "auth" | "fatal", short reason) for an exception from the client."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(e, UnexpectedResponse):
            status = e.status_code or 0
            body = e.content.decode("utf-8", "replace") if e.content else ""
            reason = f"HTTP {status} {e.reason_phrase} {body}".strip()
            if status in _TRANSIENT_HTTP:
                return "transient", reason
            if status in _AUTH_HTTP:
                return "auth", reason
            return "fatal", reason
        if isinstance(e, ResponseHandlingException):
            src = e.source
            return "transient", f"{type(src).__name__}: {src}" if src is not None else str(e)
        if isinstance(e, (ConnectionError, TimeoutError)):
            return "transient", f"{type(e).__name__}: {e}"
        try:
            import grpc
        except ImportError:  # pragma: no cover - grpcio is a dependency of qdrant-client
            grpc = None
        if grpc is not None and isinstance(e, grpc.RpcError):
            code = e.code() if hasattr(e, "code") else None
            detail = e.details() if hasattr(e, "details") else str(e)
            reason = f"gRPC {getattr(code, 'name', code)}: {detail}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "transient", reason
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return "auth", reason
            return "fatal", reason
        try:
            import httpx
        except ImportError:  # pragma: no cover
            httpx = None  # type: ignore[assignment]
        if httpx is not None and isinstance(e, httpx.TransportError):
            return "transient", f"{type(e).__name__}: {e}"
        return "fatal", f"{type(e).__name__}: {e}"

    def _tell_wait(self) -> None:
        with self._wait_lock:  # the notice timer's thread and a failed attempt may both try
            if self._wait_told or self._on_wait is None:
                return
            self._wait_told = True
        self._on_wait(f"waiting for Qdrant at {self._url} (up to {self.timeout_s:g} s)")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run a client call, retrying transient failures with backoff for at most ``timeout_s``. Until the
        server has answered once, a wait is announced (``on_wait``) after :data:`WAIT_NOTICE_S` or at the first
        failed attempt, whichever comes first."""
        if self._answered or self._wait_told or self._on_wait is None:
            return self._call_retrying(what, fn)
        timer = threading.Timer(WAIT_NOTICE_S, self._tell_wait)
        timer.daemon = True
        timer.start()
        try:
            result = self._call_retrying(what, fn)
        finally:
            timer.cancel()
        self._answered = True
        return result

    def _call_retrying(self, what: str, fn: Callable[[], T]) -> T:
        start = time.monotonic()
        deadline = start + self.timeout_s
        delay = 0.2
        attempts = 0
        while True:
            attempts += 1
            try:
                return fn()
            except Exception as e:
                kind, reason = self._classify(e)
                reason = self._scrub(reason)
                permanent = _permanent_failure(e) if kind == "transient" else None
                if permanent is not None:  # retrying cannot help: fail now, naming the URL
                    raise StoreUnavailableError(f"Qdrant server {self._url} unreachable: {permanent}") from None
                if kind == "transient":
                    self._tell_wait()
                if kind == "transient":
                    remaining = deadline - time.monotonic()
                    if remaining > 0:
                        log.debug("%s: %s failed (%s); retrying in %.1fs", self._url, what, reason, delay)
                        time.sleep(min(delay, remaining))
                        delay = min(delay * 2, 5.0)
                        continue
                    elapsed = time.monotonic() - start
                    raise StoreUnavailableError(
                        f"Qdrant server {self._url} unreachable: {what} failed {attempts} times "
                        f"in {elapsed:.1f}s ({reason}); check the URL and that the server is running"
                    ) from None
                if kind == "auth":
                    raise StoreError(
                        f"Qdrant server {self._url} refused the request ({reason}): check the API key"
                    ) from None
                raise StoreError(f"Qdrant server {self._url}: {what} failed: {reason}") from e
