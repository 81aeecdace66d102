"""``clipindex search`` through a running ``clipindex serve`` (:mod:`clipindex.web.discovery`): the same query as
one HTTP request to the warm server, so the command needs no model load. Standard library only (``urllib``):
this path never imports ONNX Runtime, FastAPI or the store's engine calls.

:func:`search` returns the server's JSON answer, or raises :class:`~clipindex.errors.ServedError` carrying the
message, exit code and hints the server's error had, so the command fails exactly as in-process. A server that
does not answer (it is stopping, or hung) raises :class:`ServeUnreachable`, and the caller falls back on searching
in-process.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

from clipindex.errors import ServedError
from clipindex.web.discovery import ServeRecord

__all__ = ["ServeUnreachable", "search"]

#: seconds to wait for a running server's answer before searching in-process instead
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 60.0


class ServeUnreachable(Exception):
    """The recorded server did not answer: search in-process."""


def search(
    record: ServeRecord,
    *,
    text: str | None = None,
    image: bytes | None = None,
    limit: int,
    min_score: float | None = None,
    folder: str | None = None,
    where: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``POST /api/v1/search`` with a text or an image's bytes, and ``where``'s fields (``after``, ``before``,
    ``camera``, ``sort``) as given; the decoded answer (``results``, ``warnings``)."""
    body: dict[str, Any] = {"limit": limit, **(where or {})}
    if text is not None:
        body["text"] = text
    else:
        assert image is not None
        body["image"] = base64.b64encode(image).decode("ascii")
    if min_score is not None:
        body["min_score"] = min_score
    if folder is not None:
        body["folder"] = folder
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if record.token:
        headers["Authorization"] = f"Bearer {record.token}"
    request = urllib.request.Request(
        record.url + "/api/v1/search", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(request, timeout=ANSWER_TIMEOUT_S) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        raise _served_error(exc) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServeUnreachable(str(exc)) from None


def _served_error(exc: urllib.error.HTTPError) -> Exception:
    try:
        error = json.loads(exc.read()).get("error")
        return ServedError(str(error["message"]), int(error["exit_code"]), tuple(error.get("hints") or ()))
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return ServeUnreachable(f"HTTP {exc.code}")
