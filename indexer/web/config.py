"""The one settings object of ``clipindex serve`` (:class:`ServeSettings`); its defaults live in
:mod:`clipindex.settings`."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from clipindex.settings import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_SERVE_HOST,
    DEFAULT_SERVE_PORT,
    DEFAULT_THUMBNAIL_CACHE_BYTES,
)

__all__ = ["LOOPBACK_NAMES", "ServeSettings", "is_loopback"]

#: the names a loopback server answers to
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the server to this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Where serve listens and what it lets in."""

    host: str = DEFAULT_SERVE_HOST
    #: 0: a free port, picked when the socket is bound
    port: int = DEFAULT_SERVE_PORT
    #: required on every API call when set (always set for a non-loopback host)
    token: str | None = None
    #: more names the Host header may carry (a reverse proxy's), beside the bound ones
    allowed_hosts: tuple[str, ...] = ()
    #: origins allowed to call the API from another site's pages (CORS); none by default
    cors_origins: tuple[str, ...] = ()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    thumbnail_cache_dir: Path | None = None
    thumbnail_cache_bytes: int = DEFAULT_THUMBNAIL_CACHE_BYTES
    #: a cap on the thumbnails' decode, like ingest's --max-pixels (None: the default)
    max_pixels: int | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def wildcard(self) -> bool:
        return self.host.strip("[]") in ("0.0.0.0", "::", "")

    def host_names(self) -> frozenset[str]:
        """The names the Host header may carry: the bound address, the loopback names for a loopback server, this
        machine's names and addresses for a wildcard or an interface address, and ``allowed_hosts``."""
        names = {self.host.strip("[]").lower(), *(h.lower() for h in self.allowed_hosts)}
        if self.loopback or self.wildcard:  # a wildcard address listens on loopback too
            names |= LOOPBACK_NAMES
        if not self.loopback:
            hostname = socket.gethostname()
            names |= {hostname.lower(), socket.getfqdn().lower()}
            with contextlib.suppress(OSError):
                names |= {str(info[4][0]).lower() for info in socket.getaddrinfo(hostname, None)}
        return frozenset(names)
