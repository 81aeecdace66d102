"""Running ``clipindex serve``: :func:`serve` binds the socket, publishes the discovery record, runs uvicorn until
Ctrl-C or SIGTERM, and cleans up (record removed, store closed) however it ends."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from clipindex.errors import ServeError
from clipindex.web.config import ServeSettings
from clipindex.web.discovery import ServeRecord, claim, find_serve, remove_record, write_record
from clipindex.web.service import SearchService

__all__ = ["bind", "local_url", "serve"]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); ServeError when the address cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if port and exc.errno in (98, 48, 10048):  # EADDRINUSE (Linux, macOS, Windows)
            raise ServeError(f"port {port} is in use on {host}: stop what runs there, or use --port 0") from None
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def local_url(settings: ServeSettings, port: int) -> str:
    """The URL that reaches the server from this machine: loopback for a loopback or wildcard address."""
    host = settings.host.strip("[]")
    if settings.wildcard:
        host = "127.0.0.1" if ":" not in settings.host else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(
    service: SearchService,
    settings: ServeSettings,
    *,
    on_ready: Callable[[str], None] | None = None,
    open_browser: bool = False,
) -> None:
    """Serve ``service`` until interrupted. ``on_ready(url)`` is called once the socket listens and the record
    is written. Raises ServeError when a non-loopback address has no token, when another serve already answers
    for this store, or when the address cannot be had."""
    import uvicorn

    from clipindex.web.app import create_app

    if not settings.loopback and not settings.token:
        raise ServeError(
            f"--host {settings.host} is reachable from other machines: give a token "
            "(--token-file FILE or CLIPINDEX_SERVE_TOKEN), or serve on 127.0.0.1"
        )
    lock_path = service.store.lock_path
    held = claim(lock_path)
    if held is None:
        running = find_serve(lock_path)
        where = f" at {running.url}/ (pid {running.pid})" if running else ""
        raise ServeError(f"{service.store.describe()} is already served{where}: use that one, or stop it first")
    sock: socket.socket | None = None
    try:
        sock = bind(settings.host, settings.port)
        port = int(sock.getsockname()[1])
        url = local_url(settings, port)
        service.warm()
        app = create_app(service, settings)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        server = _make_server(config)
        write_record(
            lock_path,
            ServeRecord(
                pid=_pid(),
                host=socket.gethostname(),
                url=url,
                port=port,
                token=settings.token,
                store=service.store.describe(),
                collection=service.store.collection,
                model_dir=str(service.location.path),
                model=service.embedder.model_name,
            ),
        )
        threading.Thread(target=_announce, args=(server, url, on_ready, open_browser), daemon=True).start()
        server.run(sockets=[sock])
    finally:
        remove_record(lock_path)
        held.release()
        if sock is not None:
            sock.close()
        service.close()


def _make_server(config: Any) -> Any:
    """uvicorn's server, stopped by Ctrl-C or SIGTERM through its own flag: it finishes the requests in flight
    and returns, and the process exits 0 (uvicorn's own handlers would re-raise the signal when it returns)."""
    import contextlib
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        def _stop(self, _signum: int, _frame: object) -> None:
            if self.should_exit:  # a second Ctrl-C: stop waiting for open connections
                self.force_exit = True
            self.should_exit = True

    return Server(config)


def _announce(server: object, url: str, on_ready: Callable[[str], None] | None, open_browser: bool) -> None:
    """Once uvicorn has started: the URL line, and the browser when asked."""
    while not getattr(server, "started", False) and not getattr(server, "should_exit", False):
        time.sleep(0.01)
    if getattr(server, "should_exit", False):
        return
    if on_ready is not None:
        on_ready(url + "/")
    if open_browser:
        import webbrowser

        webbrowser.open(url + "/")


def _pid() -> int:
    import os

    return os.getpid()
