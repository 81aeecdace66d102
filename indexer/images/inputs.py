"""The image inputs the library accepts, and how each becomes the RGB image ingest would decode.

:func:`load_input` takes one item of any of these kinds:

============================================  ==========================================================
item                                          decoded as
============================================  ==========================================================
``pathlib.Path`` / ``os.PathLike``            the file, exactly as ``clipindex ingest`` decodes it
``str``                                       see *Strings* below: a data URI, a URL, base64 or a path
``bytes`` / ``bytearray`` / ``memoryview``    the bytes of an image file
binary file-like object (has ``read()``)      its remaining bytes (``open(path, "rb")``, ``io.BytesIO``)
``PIL.Image.Image``                           its file if ``Image.open`` left it undecoded, else the pixels
``numpy.ndarray`` uint8, HWC                  ``(H, W, 3)`` RGB, ``(H, W, 4)`` RGBA, ``(H, W)`` or ``(H, W, 1)`` grey
============================================  ==========================================================

Bytes of every origin (bytes, file-like, base64, data URI, URL) go through
:func:`clipindex.images.decode.load_image_bytes`: the decoder, pixel limit, draft rule and EXIF orientation of a file,
so the same bytes give the same vector as ingest gives the file. A PIL image that ``Image.open`` returned and
nothing has decoded yet is decoded from its file (or the bytes of its file object) the same way
(:meth:`clipindex.images.preprocess.Preprocessor.load_decoded`). Decoded pixels (a loaded or computed PIL image, an
array)
get the pixel limit, EXIF orientation (a PIL image that still carries the tag) and the RGB conversion
(:func:`clipindex.images.decode.prepare_decoded_image`), but no draft decoding; an RGBA array is composited onto white
like an RGBA file.

Strings (data URI, URL, base64 or path) and URLs follow the rules in :func:`load_input`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import io
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import numpy as np
from PIL import Image

from clipindex.errors import ImageError
from clipindex.images.preprocess import Preprocessor
from clipindex.settings import DEFAULT_MAX_URL_BYTES, DEFAULT_URL_TIMEOUT_S

#: Anything :func:`load_input` accepts.
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | Image.Image | np.ndarray"

#: A string this long or longer, of the base64 alphabet only, is base64 (the smallest real image is longer).
BASE64_MIN_CHARS = 64

_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}\s*")
_WHITESPACE = re.compile(r"\s+")
_READ_CHUNK_BYTES = 1 << 16


@dataclass(frozen=True)
class UrlPolicy:
    """How URLs are treated: refused unless ``allow``; fetched within ``timeout_s`` and ``max_bytes``."""

    allow: bool = True
    timeout_s: float = DEFAULT_URL_TIMEOUT_S
    max_bytes: int = DEFAULT_MAX_URL_BYTES


def string_kind(text: str) -> str:
    """``"data_uri"``, ``"url"``, ``"base64"`` or ``"path"``: the rule of the module doc."""
    head = text[:8].lower()
    if head.startswith("data:"):
        return "data_uri"
    if head.startswith(("http://", "https://")):
        return "url"
    if len(text) >= BASE64_MIN_CHARS and _BASE64.fullmatch(text):
        compact = _WHITESPACE.sub("", text)
        if len(compact) >= BASE64_MIN_CHARS and len(compact) % 4 == 0:
            return "base64"
    return "path"


def describe(item: object, index: int) -> str:
    """How errors name ``item`` (the ``index``-th of a batch): a path or URL as such, other kinds by position."""
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    if isinstance(item, str):
        kind = string_kind(item)
        if kind == "path":
            return item
        if kind == "url":
            return _redacted(item)
        return f"item {index} ({'data URI' if kind == 'data_uri' else 'base64'}, {len(item):,} characters)"
    if isinstance(item, bytes | bytearray | memoryview):
        return f"item {index} ({type(item).__name__}, {memoryview(item).nbytes:,} bytes)"
    if isinstance(item, Image.Image):
        return f"item {index} (PIL image {item.size[0]}x{item.size[1]} {item.mode})"
    if isinstance(item, np.ndarray):
        return f"item {index} (array {tuple(item.shape)} {item.dtype})"
    name = getattr(item, "name", None)
    if isinstance(name, str) and hasattr(item, "read"):
        return name
    return f"item {index} ({type(item).__name__})"


def as_items(images: ImageInput | Iterable[ImageInput]) -> list[Any]:
    """The items of ``images``: one item alone (a path, a string, bytes, a file object, an image, an HWC array)
    is a batch of one; a 4-D ``[N, H, W, C]`` array is N images."""
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike | Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if callable(getattr(images, "read", None)):
        return [images]
    return list(images)


def load_input(item: Any, preprocessor: Preprocessor, *, name: str, urls: UrlPolicy = UrlPolicy()) -> Image.Image:
    """``item`` (any kind of the module doc) -> the RGB image ingest would decode from the same bytes.

    Raises :class:`~clipindex.errors.ImageError` naming ``name`` when the item cannot be read or decoded, is of no
    supported kind, or is a URL while ``urls.allow`` is false.

    Strings
    -------
    One rule, in this order:

    1. ``data:`` (any case) starts a data URI: ``data:image/png;base64,iVBOR...`` (or percent-encoded without
       ``;base64``);
    2. ``http://`` or ``https://`` (any case) starts a URL, fetched with the standard library (see below);
    3. a string of at least :data:`BASE64_MIN_CHARS` characters that uses only the base64 alphabet (``A-Z a-z 0-9
       + /``, ``=`` padding at the end, whitespace ignored), with a length that is a multiple of 4, is base64;
    4. anything else is a path.

    A file name with an extension has a ``.``, so it never passes rule 3; to be explicit anyway, pass a
    ``pathlib.Path`` (always a path) or a data URI (always data).

    URLs
    ----
    Fetched with ``urllib`` (proxies from the environment apply): at most ``max_bytes`` bytes
    (:data:`DEFAULT_MAX_URL_BYTES`); ``timeout_s`` (:data:`DEFAULT_URL_TIMEOUT_S`) is the deadline for connecting and
    downloading, checked between reads, and a connect or read that stalls times out after it too (the name lookup is the
    system's); redirects are followed to ``http(s)`` only. With ``allow_urls=False`` a URL is refused (an
    :class:`~clipindex.errors.ImageError`, like an unreadable image), which services that embed user-supplied strings
    should set. Errors name a URL without its query string (which may hold a token).
    """
    if isinstance(item, Image.Image):
        return preprocessor.load_decoded(item, name=name)
    if isinstance(item, np.ndarray):
        return preprocessor.load_decoded(array_image(item, name), name=name)
    if isinstance(item, bytes | bytearray | memoryview):
        return preprocessor.load_bytes(item, name=name)
    if isinstance(item, os.PathLike):
        return preprocessor.load(Path(item))
    if isinstance(item, str):
        kind = string_kind(item)
        if kind == "path":
            return preprocessor.load(item)
        if kind == "url":
            return preprocessor.load_bytes(fetch_url(item, urls, name=name), name=name)
        data = decode_data_uri(item, name) if kind == "data_uri" else decode_base64(item, name)
        return preprocessor.load_bytes(data, name=name)
    if callable(getattr(item, "read", None)):
        return preprocessor.load_bytes(read_stream(item, name), name=name)
    raise ImageError(
        name,
        f"unsupported input type {type(item).__module__}.{type(item).__qualname__} (give a path, bytes, a binary "
        "file object, a data URI, base64 text, an http(s) URL, a PIL image or an HWC uint8 numpy array)",
    )


def array_image(array: np.ndarray, name: str) -> Image.Image:
    """An ``(H, W, 3)``, ``(H, W, 4)``, ``(H, W, 1)`` or ``(H, W)`` uint8 array -> RGB, RGBA or L image."""
    if array.dtype != np.uint8:
        raise ImageError(name, f"array dtype is {array.dtype}; expected uint8 values 0-255 in HWC order")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        mode = "L"
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        mode = "RGB" if array.shape[2] == 3 else "RGBA"
    else:
        raise ImageError(
            name,
            f"array shape is {tuple(array.shape)}; expected HWC: (height, width, 3) RGB, (height, width, 4) RGBA "
            "or (height, width) grey (a channels-first (3, H, W) array needs .transpose(1, 2, 0))",
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(name, f"image has no pixels ({array.shape[1]}x{array.shape[0]})")
    return Image.fromarray(np.ascontiguousarray(array), mode)


def decode_base64(text: str, name: str) -> bytes:
    try:
        return base64.b64decode(_WHITESPACE.sub("", text), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(name, f"invalid base64 ({exc})") from exc


def decode_data_uri(text: str, name: str) -> bytes:
    """The bytes of ``data:[<mediatype>][;base64],<data>`` (RFC 2397)."""
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise ImageError(name, "malformed data URI (no ',' after the media type)")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"
    if not media_type.startswith("image/") and media_type != "application/octet-stream":
        raise ImageError(name, f"data URI of media type {media_type!r}, not an image")
    if "base64" in params[1:]:
        return decode_base64(urllib.parse.unquote(payload), name)
    return urllib.parse.unquote_to_bytes(payload)


def read_stream(stream: Any, name: str) -> bytes:
    """All the remaining bytes of a binary file-like object."""
    try:
        data = stream.read()
    except (OSError, ValueError) as exc:  # ValueError: a closed file
        raise ImageError(name, f"read error: {exc}") from exc
    if isinstance(data, str):
        raise ImageError(name, "the file object is in text mode; open it in binary mode ('rb')")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ImageError(name, f"read() returned {type(data).__name__}, not bytes")
    return bytes(data)


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) URLs only (urllib also follows them to ftp)."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, f"redirect to a non-http(s) URL {newurl!r}", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Watchdog:
    """Shuts down every socket a fetch opened once its deadline passes, so that a read blocked on a server that
    drips one byte at a time returns at once: the deadline covers connecting, the headers and the body together."""

    def __init__(self, timeout_s: float) -> None:
        self.expired = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired.is_set():
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired.set()
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _watched_handlers(watchdog: _Watchdog) -> list[urllib.request.BaseHandler]:
    """http and https handlers whose connections report their socket to ``watchdog`` as soon as it exists."""

    class WatchedHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class WatchedHTTPSConnection(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class WatchedHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(WatchedHTTPConnection, req)

    class WatchedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(WatchedHTTPSConnection, req)

    return [WatchedHTTPHandler(), WatchedHTTPSHandler()]


def fetch_url(url: str, policy: UrlPolicy, *, name: str | None = None) -> bytes:
    """The body of an http(s) ``url``, within ``policy``'s limits; :class:`ImageError` otherwise.

    ``policy.timeout_s`` is one deadline for connecting, the headers and the whole body, however slowly the bytes
    come (the name lookup is the system's); ``policy.max_bytes`` caps the body, declared or counted.
    """
    name = name or _redacted(url)
    if not policy.allow:
        raise ImageError(name, "URLs are not allowed here (allow_urls=False); fetch the image yourself")
    from clipindex.version import __version__

    request = urllib.request.Request(url, headers={"User-Agent": f"clipindex/{__version__}", "Accept": "image/*"})
    too_slow = f"timed out after {policy.timeout_s:g} s (url_timeout_s)"
    with _Watchdog(policy.timeout_s) as watchdog:
        opener = urllib.request.build_opener(_HttpRedirectsOnly(), *_watched_handlers(watchdog))
        try:
            with opener.open(request, timeout=policy.timeout_s) as response:
                declared = response.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > policy.max_bytes:
                    raise ImageError(name, _too_big(int(declared), policy.max_bytes))
                body = io.BytesIO()
                while chunk := response.read1(_READ_CHUNK_BYTES):
                    body.write(chunk)
                    if body.tell() > policy.max_bytes:
                        raise ImageError(name, _too_big(None, policy.max_bytes))
                if watchdog.expired.is_set():  # the watchdog cut the body short: not the whole image
                    raise ImageError(name, too_slow)
                return body.getvalue()
        except ImageError:
            raise
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ImageError(name, f"HTTP {exc.code} {exc.reason}") from exc
        except (TimeoutError, OSError, ValueError, http.client.HTTPException) as exc:
            if watchdog.expired.is_set() or isinstance(exc, TimeoutError):
                raise ImageError(name, too_slow) from exc
            if isinstance(exc, urllib.error.URLError):
                if isinstance(exc.reason, TimeoutError):
                    raise ImageError(name, too_slow) from exc
                raise ImageError(name, f"cannot fetch: {_one_line(str(exc.reason))}") from exc
            raise ImageError(name, f"cannot fetch: {type(exc).__name__}: {_one_line(str(exc))}") from exc


def _one_line(text: str) -> str:
    """``text`` on one line: a reason never carries a newline into a log."""
    return " ".join(text.split())


def _too_big(declared: int | None, limit: int) -> str:
    size = f"{declared:,} bytes" if declared is not None else f"more than {limit:,} bytes"
    return f"the response is {size}, over the limit of {limit:,} bytes (max_url_bytes)"


def _redacted(url: str) -> str:
    """``url`` without a user and password, query string or fragment (which may carry a signature or a token)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if not (parts.query or parts.fragment) and host == parts.netloc:
        return url
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + ("?…" if parts.query else "")
