"""The ASGI app of ``clipindex serve`` (FastAPI): the JSON API under ``/api/v1``, clip-retrieval's
``/knn-service``, and the page at ``/``. Routes are thin: each calls one :class:`~clipindex.web.service.SearchService`
method and turns its typed errors into status codes (:data:`STATUS_OF`).

Routes are plain functions, so FastAPI runs them on its worker threads: decoding, inference and store reads never
run on the event loop. The OpenAPI document is at ``/api/v1/openapi.json``; there is no documentation UI (it
would load scripts from a CDN).
"""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipindex.errors import (
    ClipIndexError,
    CollectionMismatchError,
    ImageError,
    NothingIndexedError,
    PointNotFoundError,
    RequestTooLargeError,
    StoreBusyError,
    StoreUnavailableError,
)
from clipindex.settings import (
    DEFAULT_LIMIT,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_THUMBNAIL_SIZE,
    MAX_SEARCH_LIMIT,
    MAX_SEARCH_OFFSET,
    MAX_THUMBNAIL_SIZE,
)
from clipindex.version import __version__
from clipindex.web.config import ServeSettings
from clipindex.web.security import Guard
from clipindex.web.service import SearchOutcome, SearchService, Where, decode_base64_image, thumbnail_url

if TYPE_CHECKING:
    from clipindex.ops.duplicates import DuplicateReport

__all__ = ["STATUS_OF", "create_app"]

#: typed errors -> HTTP status (the most specific class first); any other ClipIndexError is a 500
STATUS_OF: tuple[tuple[type[ClipIndexError], int], ...] = (
    (PointNotFoundError, 404),
    (NothingIndexedError, 404),
    (CollectionMismatchError, 409),
    (ImageError, 422),
    (RequestTooLargeError, 413),
    (StoreBusyError, 503),
    (StoreUnavailableError, 503),
)

#: a folder filter is an absolute path (paths are stored absolute); it is matched, never opened
FOLDER_PATTERN = r"^/[^\x00]*$"

# --- the API's types ------------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    type: str
    message: str
    #: what ``clipindex search`` exits with for the same error
    exit_code: int
    hints: list[str]


class ErrorBody(BaseModel):
    error: ErrorDetail


class Hit(BaseModel):
    id: str
    rank: int
    score: float
    path: str
    width: int | None
    height: int | None
    #: URL path of its thumbnail (``/api/v1/thumbnails/{id}?size=256&v=...``)
    thumbnail: str
    #: the path's bytes, base64, only when the path is not valid UTF-8 (``path`` then shows them escaped)
    path_bytes: str | None = None
    #: when it was taken (ISO 8601, EXIF's DateTimeOriginal, else the file's mtime: see ``taken_at_source``)
    taken_at: str | None = None
    taken_at_source: Literal["exif", "mtime"] | None = None
    camera_make: str | None = None
    camera_model: str | None = None


class SearchResponse(BaseModel):
    results: list[Hit]
    took_ms: float
    #: notes on the query (text past the model's context, say): ``clipindex search`` prints them as warnings
    warnings: list[str] = []


Limit = Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)]
#: ``--after``/``--before``'s forms: YYYY, YYYY-MM, YYYY-MM-DD or an ISO 8601 date-time
When = Annotated[str, Field(min_length=4, max_length=40)]
Camera = Annotated[str, Field(min_length=1, max_length=200)]
Sort = Literal["score", "date"]
Offset = Annotated[int, Field(ge=0, le=MAX_SEARCH_OFFSET)]
Score = Annotated[float, Field(ge=-1.0, le=1.0)]


class Term(BaseModel):
    """One term of a combined query: exactly one of ``text``, ``image_id`` and ``image`` (base64), weighted."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    image_id: str | None = None
    image: str | None = None
    weight: Annotated[float, Field(gt=0, le=1000)] = 1.0

    @model_validator(mode="after")
    def one_kind(self) -> Term:
        if sum(getattr(self, name) is not None for name in ("text", "image_id", "image")) != 1:
            raise ValueError("a term gives exactly one of text, image_id and image")
        return self


class SearchBody(BaseModel):
    """One query: ``text``, ``image_id`` (an indexed point: "more like this") or ``image`` (base64), and/or terms to
    ``add`` and ``subtract`` (query arithmetic: the weighted sum of the added terms' embeddings minus the
    subtracted ones', normalised; the query field, when given, is one more added term of weight 1)."""

    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, Field(min_length=1, max_length=10_000)] | None = None
    image_id: str | None = None
    image: str | None = None
    add: Annotated[list[Term], Field(max_length=16)] = []
    subtract: Annotated[list[Term], Field(max_length=16)] = []
    limit: Limit = DEFAULT_LIMIT
    offset: Offset = 0
    min_score: Score | None = None
    folder: Annotated[str, Field(pattern=FOLDER_PATTERN)] | None = None
    after: When | None = None
    before: When | None = None
    camera: Camera | None = None
    sort: Sort = "score"

    @model_validator(mode="after")
    def one_query(self) -> SearchBody:
        given = [name for name in ("text", "image_id", "image") if getattr(self, name) is not None]
        if len(given) > 1 or not (given or self.add):
            raise ValueError("give exactly one of text, image_id and image, or terms to add")
        return self

    def terms(self) -> list[tuple[Term, int]]:
        """Every term with its sign: the query field first, then ``add``, then ``subtract``."""
        first = [Term(text=self.text, image_id=self.image_id, image=self.image)] if self.has_query else []
        return [(t, 1) for t in [*first, *self.add]] + [(t, -1) for t in self.subtract]

    @property
    def has_query(self) -> bool:
        return any(getattr(self, name) is not None for name in ("text", "image_id", "image"))


class DuplicateFile(BaseModel):
    id: str
    path: str
    #: cosine similarity to the group's best file (1.0 for the best itself)
    similarity: float
    best: bool
    width: int | None
    height: int | None
    mtime: float | None
    size: int | None
    sha256: str | None
    thumbnail: str
    path_bytes: str | None = None


class DuplicateGroupBody(BaseModel):
    #: ``exact``: every file holds the same bytes; ``near``: linked by similarity
    kind: Literal["exact", "near"]
    files: list[DuplicateFile]


class SampledRecallBody(BaseModel):
    sampled: int
    expected: int
    found: int
    recall: float


class DuplicatesResponse(BaseModel):
    """``clipindex duplicates --json``'s groups, each file with its id and thumbnail."""

    min_similarity: float
    folder: str | None
    scanned: int
    #: ``exact`` (every pair compared) or ``cells`` (the cell index, above 150k points)
    method: Literal["exact", "cells"]
    sampled_recall: SampledRecallBody | None
    groups: list[DuplicateGroupBody]
    took_ms: float


class KnnRequest(BaseModel):
    """clip-retrieval's clip-back request (``ClipClient`` and clip-front send these fields)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "anyOf": [{"required": ["text"]}, {"required": ["image"]}, {"required": ["embedding_input"]}]
        },
    )

    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: Literal["image", "text"] = "image"
    num_images: Annotated[int, Field(ge=1, le=MAX_SEARCH_LIMIT)] = 40
    num_result_ids: int | None = None
    indice_name: str | None = None


class KnnResult(BaseModel):
    id: str
    similarity: float
    url: str
    caption: str


def _error(exc: ClipIndexError) -> JSONResponse:
    status = next((code for cls, code in STATUS_OF if isinstance(exc, cls)), 500)
    body = ErrorBody(
        error=ErrorDetail(
            type=type(exc).__name__,
            message=" ".join(str(exc).split()),
            exit_code=exc.exit_code,
            hints=list(exc.hints),
        )
    )
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``query.limit: Input should be less than or equal to 1000``."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
        message = str(error.get("msg", "invalid"))
        if FOLDER_PATTERN in message:
            message = "must be an absolute path, e.g. /home/me/Pictures"
        parts.append(f"{where}: {message}")
    return "; ".join(parts) or "invalid request"


def _value_error(exc: ValueError) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(type="ValueError", message=str(exc), exit_code=2, hints=[]))
    return JSONResponse(body.model_dump(), status_code=422)


def _text(payload: dict[str, Any], name: str) -> str | None:
    value = payload.get(name)
    return value if isinstance(value, str) and value else None


def _source(payload: dict[str, Any]) -> Literal["exif", "mtime"] | None:
    value = payload.get("taken_at_source")
    return "exif" if value == "exif" else "mtime" if value == "mtime" else None


def _response(outcome: SearchOutcome) -> SearchResponse:
    response = SearchResponse(
        results=[
            Hit(
                id=r.id,
                rank=r.rank,
                score=r.score,
                path=r.path,
                width=r.width,
                height=r.height,
                thumbnail=thumbnail_url(r.id, _text(r.payload, "sha256")),
                path_bytes=_text(r.payload, "path_bytes"),
                taken_at=_text(r.payload, "taken_at"),
                taken_at_source=_source(r.payload),
                camera_make=_text(r.payload, "camera_make"),
                camera_model=_text(r.payload, "camera_model"),
            )
            for r in outcome.results
        ],
        took_ms=outcome.took_ms,
        warnings=outcome.warnings,
    )
    return response


def _duplicates_response(report: DuplicateReport, took_ms: float) -> DuplicatesResponse:
    check = report.sampled_recall
    return DuplicatesResponse(
        min_similarity=report.min_similarity,
        folder=report.path_prefix,
        scanned=report.scanned,
        method=report.method,
        sampled_recall=None
        if check is None
        else SampledRecallBody(sampled=check.sampled, expected=check.expected, found=check.found, recall=check.recall),
        groups=[
            DuplicateGroupBody(
                kind=group.kind,
                files=[
                    DuplicateFile(
                        id=m.id,
                        path=m.path,
                        similarity=m.similarity,
                        best=m is group.best,
                        width=m.width,
                        height=m.height,
                        mtime=m.mtime,
                        size=m.size,
                        sha256=m.sha256,
                        thumbnail=thumbnail_url(m.id, m.sha256),
                        path_bytes=m.path_bytes,
                    )
                    for m in group.members
                ],
            )
            for group in report.groups
        ],
        took_ms=took_ms,
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "a body that cannot be parsed (JSON or multipart)"),
        (404, "no such point, or nothing indexed"),
        (409, "the collection was built by another model"),
        (413, "the request body is over the upload cap"),
        (422, "invalid parameters, or an image that cannot be read"),
        (503, "the store is busy or unreachable; try again"),
    )
}

THUMBNAIL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "a JPEG"},
    304: {"description": "unchanged since the ETag the client sent"},
    404: ERRORS[404],
    422: ERRORS[422],
}
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {}}, "description": "the file"},
    404: ERRORS[404],
}

AFTER_HELP = "only photos taken at or after this date: YYYY, YYYY-MM, YYYY-MM-DD or ISO 8601 (no offset: UTC)"
BEFORE_HELP = "only photos taken before this date (its start: 2024 keeps 2023 and earlier); forms as after"
CAMERA_HELP = "only photos whose EXIF camera make or model, or consecutive words of either, are this text"
SORT_HELP = "score (best first) or date (oldest first, undated last) of the best matches"

_QUERY_FIELDS: dict[str, Any] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_LIMIT, "default": DEFAULT_LIMIT},
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_SEARCH_OFFSET, "default": 0},
    "min_score": {"type": "number", "minimum": -1, "maximum": 1},
    "folder": {"type": "string", "pattern": FOLDER_PATTERN, "description": "only files under this absolute folder"},
    "after": {"type": "string", "minLength": 4, "maxLength": 40, "description": AFTER_HELP},
    "before": {"type": "string", "minLength": 4, "maxLength": 40, "description": BEFORE_HELP},
    "camera": {"type": "string", "minLength": 1, "maxLength": 200, "description": CAMERA_HELP},
    "sort": {"type": "string", "enum": ["score", "date"], "default": "score", "description": SORT_HELP},
}
_TERM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 10_000},
        "image_id": {"type": "string", "format": "uuid"},
        "image": {"type": "string", "format": "byte"},
        "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000, "default": 1},
    },
    "oneOf": [{"required": ["text"]}, {"required": ["image_id"]}, {"required": ["image"]}],
    "additionalProperties": False,
}
#: the JSON body, at most one query field (what SearchBody checks), written out for the OpenAPI document
_SEARCH_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "text": {"type": "string", "minLength": 1, "maxLength": 10_000},
        "image_id": {"type": "string", "format": "uuid", "description": "an indexed point: more like this"},
        "image": {"type": "string", "format": "byte", "description": "an image file's bytes, base64"},
        "add": {"type": "array", "items": _TERM_SCHEMA, "maxItems": 16},
        "subtract": {"type": "array", "items": _TERM_SCHEMA, "maxItems": 16},
        **_QUERY_FIELDS,
    },
    "anyOf": [
        {"required": ["text"]},
        {"required": ["image_id"]},
        {"required": ["image"]},
        {"required": ["add"], "properties": {"add": {"minItems": 1}}},
    ],
    "not": {
        "anyOf": [
            {"required": ["text", "image_id"]},
            {"required": ["text", "image"]},
            {"required": ["image_id", "image"]},
        ]
    },
    "additionalProperties": False,
}
_MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"image": {"type": "string", "format": "binary"}, **_QUERY_FIELDS},
    "required": ["image"],
}


def _static_dir() -> str:
    return str(resources.files("clipindex.web").joinpath("static"))


PAGE_HEADERS = {
    # the page runs only its own script; file names can never become markup that runs
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def create_app(service: SearchService, settings: ServeSettings) -> Any:
    """The ASGI app: FastAPI routes inside :class:`~clipindex.web.security.Guard` (and CORS when asked for)."""
    app = FastAPI(
        title="clipindex",
        version=__version__,
        description="Search an indexed photo collection by text, by image, or by an indexed image.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(ClipIndexError)
    async def clipindex_error(_request: Request, exc: ClipIndexError) -> JSONResponse:
        return _error(exc)

    @app.exception_handler(ValueError)
    async def value_error(_request: Request, exc: ValueError) -> JSONResponse:
        return _value_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        body = ErrorBody(error=ErrorDetail(type="HTTPError", message=detail, exit_code=1, hints=[]))
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _value_error(ValueError(_validation_message(exc)))

    # --- API ----------------------------------------------------------------------------------------------

    @app.get("/api/v1/search", response_model=SearchResponse, responses=ERRORS, tags=["search"])
    def search_get(
        q: Annotated[str, Query(min_length=1, max_length=10_000, description="the text query")],
        limit: Annotated[int, Query(ge=1, le=MAX_SEARCH_LIMIT)] = DEFAULT_LIMIT,
        offset: Annotated[int, Query(ge=0, le=MAX_SEARCH_OFFSET)] = 0,
        min_score: Annotated[float | None, Query(ge=-1.0, le=1.0)] = None,
        folder: Annotated[
            str | None, Query(pattern=FOLDER_PATTERN, description="only files under this absolute folder")
        ] = None,
        after: Annotated[str | None, Query(min_length=4, max_length=40, description=AFTER_HELP)] = None,
        before: Annotated[str | None, Query(min_length=4, max_length=40, description=BEFORE_HELP)] = None,
        camera: Annotated[str | None, Query(min_length=1, max_length=200, description=CAMERA_HELP)] = None,
        sort: Annotated[Sort, Query(description=SORT_HELP)] = "score",
    ) -> SearchResponse:
        """Images best matching a text query; ranks and scores equal ``clipindex search --json``'s."""
        where = Where(after, before, camera, sort)
        return _response(
            service.search_text(q, limit=limit, offset=offset, min_score=min_score, folder=folder, where=where)
        )

    @app.post(
        "/api/v1/search",
        response_model=SearchResponse,
        responses=ERRORS,
        tags=["search"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": _SEARCH_BODY_SCHEMA},
                    "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
                },
            }
        },
    )
    async def search_post(request: Request) -> Any:
        """A query as JSON (``text``, ``image_id`` or a base64 ``image``), or an image uploaded as multipart."""
        from starlette.concurrency import run_in_threadpool

        body = await _read_search_body(request)
        where: dict[str, Any] = {
            "limit": body.limit,
            "offset": body.offset,
            "min_score": body.min_score,
            "folder": body.folder,
            "where": Where(body.after, body.before, body.camera, body.sort),
        }
        if body.add or body.subtract:
            terms = [
                (
                    ("text", t.text)
                    if t.text is not None
                    else ("image_id", t.image_id)
                    if t.image_id is not None
                    else ("image", decode_base64_image(t.image or "")),
                    t.weight,
                    sign,
                )
                for t, sign in body.terms()
            ]
            outcome = await run_in_threadpool(lambda: service.search_combined(terms, **where))
        elif body.text is not None:
            outcome = await run_in_threadpool(lambda: service.search_text(body.text or "", **where))
        elif body.image_id is not None:
            outcome = await run_in_threadpool(lambda: service.search_point(body.image_id or "", **where))
        else:
            data = decode_base64_image(body.image or "")
            outcome = await run_in_threadpool(lambda: service.search_image(data, **where))
        return _response(outcome)

    @app.get("/api/v1/status", tags=["status"], responses=ERRORS)
    def status() -> dict[str, Any]:
        """What ``clipindex status --json`` prints, a running ingest's live progress included."""
        return service.status()

    @app.get("/api/v1/duplicates", response_model=DuplicatesResponse, responses=ERRORS, tags=["duplicates"])
    def duplicates(
        min_similarity: Annotated[
            float, Query(ge=-1.0, le=1.0, description="near-duplicates: cosine similarity this or more")
        ] = DEFAULT_MIN_SIMILARITY,
        folder: Annotated[
            str | None, Query(pattern=FOLDER_PATTERN, description="only files under this absolute folder")
        ] = None,
    ) -> DuplicatesResponse:
        """Groups of exact copies and near-duplicates, as ``clipindex duplicates --json`` finds them (the best
        file of each group, the one to keep, marked). Reads every vector: seconds at 100k points, a minute or
        two at 1M; searches keep being answered meanwhile. Nothing is deleted."""
        started = time.perf_counter()
        report = service.duplicates(min_similarity=min_similarity, folder=folder)
        return _duplicates_response(report, round((time.perf_counter() - started) * 1000, 3))

    @app.get(
        "/api/v1/thumbnails/{point_id}",
        tags=["images"],
        response_class=Response,
        responses=THUMBNAIL_RESPONSES,
    )
    def thumbnail(
        point_id: str,
        request: Request,
        size: Annotated[int, Query(ge=16, le=MAX_THUMBNAIL_SIZE)] = DEFAULT_THUMBNAIL_SIZE,
        v: Annotated[str | None, Query(max_length=64, description="content version, for caching")] = None,
    ) -> Response:
        """An indexed image's thumbnail (its short side ``size`` pixels), cached on disk."""
        thumb = service.thumbnail(point_id, size)
        # a URL naming the content it shows may be cached for good; any other must be revalidated (ETag)
        cache = "private, max-age=31536000, immutable" if v and v == thumb.version else "private, no-cache"
        headers = {"ETag": thumb.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == thumb.etag:
            return Response(status_code=304, headers=headers)
        return Response(thumb.data, media_type="image/jpeg", headers=headers)

    @app.get(
        "/api/v1/images/{point_id}",
        tags=["images"],
        response_class=FileResponse,
        responses=IMAGE_RESPONSES,
    )
    def image(point_id: str) -> FileResponse:
        """An indexed image's file, as stored."""
        path, media = service.image(point_id)
        return FileResponse(
            path,
            media_type=media,
            headers={"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"},
            content_disposition_type="inline",
        )

    # --- clip-retrieval --------------------------------------------------------------------------------------

    @app.get("/indices-list", tags=["clip-retrieval"])
    def indices_list() -> list[str]:
        """clip-back's list of indices: this server's collection."""
        return [service.store.collection]

    @app.post("/knn-service", response_model=list[KnnResult], responses=ERRORS, tags=["clip-retrieval"])
    def knn_service(body: KnnRequest, request: Request) -> list[KnnResult]:
        """clip-back's search: ``text``, a base64 ``image`` or an ``embedding_input`` vector, ``num_images``
        results as ``[{id, similarity, url, caption}]``. Only the image modality exists here (no captions are
        indexed); ``image_url`` is refused: the server never fetches URLs."""
        if body.modality == "text":
            return []
        if body.image_url is not None and body.text is None and body.image is None and body.embedding_input is None:
            raise ValueError("image_url is not supported: send the image itself, base64-encoded, as image")
        where: dict[str, Any] = {"limit": body.num_images}
        if body.embedding_input is not None:
            outcome = service.search_embedding(body.embedding_input, **where)
        elif body.image is not None:
            outcome = service.search_image(decode_base64_image(body.image), **where)
        elif body.text is not None and body.text.strip():
            outcome = service.search_text(body.text, **where)
        else:
            raise ValueError("give text, image (base64) or embedding_input")
        base = str(request.base_url).rstrip("/")
        return [
            KnnResult(
                id=r.id, similarity=r.score, url=f"{base}/api/v1/images/{r.id}", caption=r.path.rsplit("/", 1)[-1]
            )
            for r in outcome.results
        ]

    # --- the page -------------------------------------------------------------------------------------------

    static = _static_dir()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(f"{static}/index.html", media_type="text/html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=static), name="static")

    inner: Any = app
    if settings.cors_origins:
        inner = CORSMiddleware(
            inner,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return Guard(
        inner,
        host_names=settings.host_names(),
        token=settings.token,
        max_body_bytes=settings.max_upload_bytes,
    )


async def _read_search_body(request: Request) -> SearchBody:
    """The JSON body, or a multipart form whose ``image`` is an uploaded file; 422 when neither is valid."""
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if kind == "multipart/form-data":
            import base64

            form = await request.form(max_files=1, max_fields=10)
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise RequestValidationError(
                    [{"loc": ("body", "image"), "msg": "upload the image as a file", "type": "missing"}]
                )
            data = await upload.read()
            fields: dict[str, Any] = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
            return SearchBody.model_validate({**fields, "image": base64.b64encode(data).decode("ascii")})
        try:
            payload = json.loads(await request.body())
        except ValueError:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "send a JSON object, or a multipart form", "type": "json_invalid"}]
            ) from None
        return SearchBody.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
