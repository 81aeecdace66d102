"""The checks every request passes before a route sees it (pure ASGI middleware, :class:`Guard`):

1. **Host.** The ``Host`` header must name the server (:meth:`ServeSettings.host_names`): a page on another site
   that rebinds its DNS name to 127.0.0.1 still sends its own name, and is refused with 421.
2. **Token.** When the server has a token, every API call (``/api/...``, ``/knn-service``, ``/indices-list``)
   must carry it: ``Authorization: Bearer TOKEN``, or the ``clipindex_token`` cookie the page sets when it asks
   for it. It is compared in constant time; a missing or wrong token gets 401. The page and its assets hold no
   data and need none.
3. **Size.** A request body over the upload cap gets 413, whether it declares its length or streams it: the
   body is read up to the cap before the route runs.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import CookieError, SimpleCookie
from typing import Any

__all__ = ["TOKEN_COOKIE", "Guard", "is_api_path"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOKEN_COOKIE = "clipindex_token"
_API_PREFIXES = ("/api/", "/knn-service", "/indices-list")


def is_api_path(path: str) -> bool:
    return path.startswith(_API_PREFIXES)


def _host_name(value: str) -> str:
    """The name part of a Host header: ``[::1]:8765`` -> ``::1``, ``Example.org:80`` -> ``example.org``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _headers(scope: Scope) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        name = key.decode("latin-1").lower()
        found[name] = (found[name] + "; " if name == "cookie" and name in found else "") + value.decode("latin-1")
    return found


def _presented_token(headers: dict[str, str]) -> str | None:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    cookies = headers.get("cookie")
    if cookies:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookies)
        except CookieError:
            return None
        morsel = jar.get(TOKEN_COOKIE)
        if morsel is not None:
            return morsel.value
    return None


async def _refuse(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": {"type": "Refused", "message": message, "exit_code": 1, "hints": []}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """``Guard(app, host_names=..., token=..., max_body_bytes=...)``: the module doc's three checks."""

    def __init__(self, app: ASGIApp, *, host_names: frozenset[str], token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.host_names = host_names
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host")
        if host is None or _host_name(host) not in self.host_names:
            await _refuse(send, 421, "this server does not answer to that host name (Host header)")
            return
        if self.token is not None and is_api_path(scope.get("path", "")):
            presented = _presented_token(headers)
            if presented is None or not hmac.compare_digest(presented.encode(), self.token.encode()):
                await _refuse(
                    send, 401, "a token is needed: Authorization: Bearer TOKEN", [(b"www-authenticate", b"Bearer")]
                )
                return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _refuse(send, 413, f"the request body is over {self.max_body_bytes // 2**20} MiB")
            return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    await _refuse(send, 413, f"the request body is over {self.max_body_bytes // 2**20} MiB")
                    return
                chunks.append(chunk)
                more = bool(message.get("more_body"))
            body = b"".join(chunks)
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)
