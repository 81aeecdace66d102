"""Network helpers for the fault tests: a TCP proxy that can be cut and restored, and a small Qdrant REST server.

* :class:`TcpProxy` forwards ``127.0.0.1:<port>`` to a target port with two threads per connection.
  :meth:`TcpProxy.cut` closes the listening socket *and* every open connection (a keep-alive client sees its
  connection reset, a new connection is refused), like a server that went away; :meth:`TcpProxy.restore`
  listens again on the same port.
* :class:`QdrantRestServer` serves the part of Qdrant's REST API that qdrant-client's ``QdrantClient(url=...)``
  uses for clipindex (collections exists/get/put/patch, payload index, points upsert/count/scroll/retrieve/
  delete/query) by parsing each JSON body into ``qdrant_client.models`` and calling a qdrant-client *local-mode*
  instance (``QdrantClient(":memory:")`` or ``path=...``). No Qdrant server can run here; this keeps the real
  client, the real HTTP transport, the real retries of :class:`clipindex.store.ServerStore` and a real engine that
  speaks the same API behind it. It binds 127.0.0.1 only, checks an API key when given one, and counts the
  requests it served (``calls``) so that a test can cut the proxy after N upserts.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["QdrantRestServer", "TcpProxy", "closed_port"]


def closed_port() -> int:
    """A local TCP port with nothing listening on it (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class TcpProxy:
    """``127.0.0.1:port`` -> ``127.0.0.1:target_port``; :meth:`cut` drops everything, :meth:`restore` comes back."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self.connections = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accept_thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Stop listening and reset every open connection (RST, not a polite FIN)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restore(self) -> None:
        """Listen again on the same port."""
        if self._listener is None:
            self.start()

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while we were connecting
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


# --- a Qdrant REST server backed by qdrant-client's local mode -------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/collections/(?P<name>[^/]+)/exists$"), "exists"),
    ("GET", re.compile(r"^/collections/(?P<name>[^/]+)$"), "get_collection"),
    ("PUT", re.compile(r"^/collections/(?P<name>[^/]+)$"), "create_collection"),
    ("PATCH", re.compile(r"^/collections/(?P<name>[^/]+)$"), "update_collection"),
    ("DELETE", re.compile(r"^/collections/(?P<name>[^/]+)$"), "delete_collection"),
    ("PUT", re.compile(r"^/collections/(?P<name>[^/]+)/index$"), "create_index"),
    ("PUT", re.compile(r"^/collections/(?P<name>[^/]+)/points$"), "upsert"),
    ("POST", re.compile(r"^/collections/(?P<name>[^/]+)/points$"), "retrieve"),
    ("POST", re.compile(r"^/collections/(?P<name>[^/]+)/points/count$"), "count"),
    ("POST", re.compile(r"^/collections/(?P<name>[^/]+)/points/scroll$"), "scroll"),
    ("POST", re.compile(r"^/collections/(?P<name>[^/]+)/points/delete$"), "delete"),
    ("POST", re.compile(r"^/collections/(?P<name>[^/]+)/points/query$"), "query"),
]


class QdrantRestServer:
    """A REST facade over a qdrant-client local-mode instance, on ``127.0.0.1``.

    ``server = QdrantRestServer(api_key="k").start()`` then ``QdrantClient(url=server.url, api_key="k")``.
    ``created`` records the ``create_collection`` bodies (``shard_number``, ``replication_factor``...) and
    ``queries`` the ``points/query`` bodies (``params``...);
    ``calls`` counts the requests served by route; ``before_request(route)`` runs first (a test hook).
    """

    def __init__(self, *, path: str | None = None, api_key: str | None = None) -> None:
        from qdrant_client import QdrantClient

        self.local = QdrantClient(path=path) if path else QdrantClient(":memory:")
        self.api_key = api_key
        self.calls: Counter[str] = Counter()
        self.created: dict[str, dict[str, Any]] = {}
        self.queries: list[dict[str, Any]] = []
        #: per route: seconds spent answering (parse, local mode, reply) and request bytes received
        self.server_s: Counter[str] = Counter()
        self.bytes_in: Counter[str] = Counter()
        self.before_request: Callable[[str], None] | None = None
        self._engine_lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> QdrantRestServer:
        facade = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real server

            def do_GET(self) -> None:
                facade._serve(self, "GET")

            def do_PUT(self) -> None:
                facade._serve(self, "PUT")

            def do_POST(self) -> None:
                facade._serve(self, "POST")

            def do_PATCH(self) -> None:
                facade._serve(self, "PATCH")

            def do_DELETE(self) -> None:
                facade._serve(self, "DELETE")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.local.close()

    def __enter__(self) -> QdrantRestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP -----------------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        started = time.monotonic()
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        status, result = 200, None
        route = "unknown"
        try:
            if self.api_key is not None and handler.headers.get("api-key") != self.api_key:
                raise _HttpError(401, "Must provide an API key or an Authorization bearer token")
            for want, pattern, name in _ROUTES:
                match = pattern.match(parts.path)
                if want == method and match:
                    route = name
                    break
            else:
                raise _HttpError(404, f"no route {method} {parts.path}")
            if self.before_request is not None:
                self.before_request(route)
            body = json.loads(raw) if raw else {}
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with self._engine_lock:
                result = getattr(self, f"_{route}")(match.group("name"), body, query)
            self.calls[route] += 1
            self.bytes_in[route] += len(raw)
        except _HttpError as e:
            status, result = e.status, str(e)
        except ValueError as e:  # local mode: "Collection x not found", bad input
            text = str(e)
            status, result = (404 if "not found" in text else 400), text
        except Exception as e:  # a bug in this facade: answer 500, like a server would
            status, result = 500, f"{type(e).__name__}: {e}"
        body_out: dict[str, Any] = {"time": time.monotonic() - started}
        if status == 200:
            body_out.update(status="ok", result=result)
        else:
            body_out["status"] = {"error": result}
        data = json.dumps(body_out).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except OSError:  # the proxy was cut while we worked: the client never hears the reply
            handler.close_connection = True
        self.server_s[route] += time.monotonic() - started

    # --- routes: JSON in, local mode, JSON out --------------------------------------------------------

    @staticmethod
    def _parse(model: Any, body: Any) -> Any:
        from pydantic import TypeAdapter

        return TypeAdapter(model).validate_python(body)

    @staticmethod
    def _dump(value: Any) -> Any:
        from pydantic import TypeAdapter

        return TypeAdapter(Any).dump_python(value, mode="json")

    def _exists(self, name: str, body: Any, query: dict[str, str]) -> Any:
        return {"exists": self.local.collection_exists(name)}

    def _get_collection(self, name: str, body: Any, query: dict[str, str]) -> Any:
        return self._dump(self.local.get_collection(name))

    def _create_collection(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        if self.local.collection_exists(name):
            raise _HttpError(409, f"Wrong input: Collection `{name}` already exists!")
        request = self._parse(models.CreateCollection, body)
        self.created[name] = body
        return self.local.create_collection(name, vectors_config=request.vectors, metadata=request.metadata)

    def _update_collection(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.UpdateCollection, body)
        return self.local.update_collection(name, metadata=request.metadata)

    def _delete_collection(self, name: str, body: Any, query: dict[str, str]) -> Any:
        return self.local.delete_collection(name)

    def _create_index(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        self._parse(models.CreateFieldIndex, body)
        self.local.get_collection(name)  # 404 when missing; local mode has no payload indexes
        return {"operation_id": 0, "status": "completed"}

    def _upsert(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.PointInsertOperations, body)
        if isinstance(request, models.PointsBatch):
            result = self.local.upsert(name, points=request.batch)
        else:
            result = self.local.upsert(name, points=request.points)
        return self._dump(result)

    def _retrieve(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.PointRequest, body)
        records = self.local.retrieve(
            name,
            ids=request.ids,
            with_payload=request.with_payload if request.with_payload is not None else True,
            with_vectors=request.with_vector if request.with_vector is not None else False,
        )
        return self._dump(records)

    def _count(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.CountRequest, body)
        return self._dump(self.local.count(name, count_filter=request.filter, exact=request.exact is not False))

    def _scroll(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.ScrollRequest, body)
        points, next_offset = self.local.scroll(
            name,
            scroll_filter=request.filter,
            limit=request.limit or 10,
            offset=request.offset,
            with_payload=request.with_payload if request.with_payload is not None else True,
            with_vectors=request.with_vector if request.with_vector is not None else False,
        )
        return self._dump(models.ScrollResult(points=points, next_page_offset=next_offset))

    def _delete(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        selector = self._parse(models.PointsSelector, body)
        return self._dump(self.local.delete(name, points_selector=selector))

    def _query(self, name: str, body: Any, query: dict[str, str]) -> Any:
        from qdrant_client import models

        request = self._parse(models.QueryRequest, body)
        self.queries.append(body)
        q = request.query
        if isinstance(q, models.NearestQuery):
            q = q.nearest
        response = self.local.query_points(
            name,
            query=q,
            query_filter=request.filter,
            limit=request.limit or 10,
            score_threshold=request.score_threshold,
            with_payload=request.with_payload if request.with_payload is not None else False,
            with_vectors=request.with_vector if request.with_vector is not None else False,
        )
        return self._dump(response)
