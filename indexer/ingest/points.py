"""Point identity and payload: one point per image file.

- The id is a UUID derived from the file's absolute path *bytes* (``os.fsencode``), so it is the same on every
  run and for every machine that sees the same path, and works for file names that are not valid UTF-8.
- ``path`` in the payload is that absolute path as text; bytes that are not UTF-8 show as ``\\xNN`` escapes
  (Qdrant payloads must be valid UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from datetime import datetime, timezone
from typing import Any

#: namespace of clipindex point ids (uuid5 of the absolute path bytes in it)
ID_NAMESPACE = uuid.UUID("8b6a1f2e-6c1d-5f7e-9a43-0c1a2b3c4d5e")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes

#: payload keys the incremental ingest reads back for every stored point (``--prune`` then reads ``path`` of the
#: points the walk did not see)
INDEX_FIELDS: tuple[str, ...] = ("size", "mtime_ns", "sha256")
#: payload keys naming what computed the vector: the engine ("onnxruntime", "openvino") and its precision
ENGINE_FIELDS: tuple[str, ...] = ("engine", "precision")
#: the engine label of vectors whose payload does not name one (written before payloads recorded engines)
UNRECORDED_ENGINE = "unrecorded"


def absolute(path: str | os.PathLike[str]) -> str:
    """Absolute, normalised path (symlinks are kept: a link is indexed under its own name)."""
    return os.path.abspath(os.fspath(path))


def display_path(path: str) -> str:
    """The path as valid UTF-8 text (undecodable bytes become ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def path_bytes(path: str) -> str | None:
    """The path's bytes in base64 when they are not valid UTF-8 (then :func:`display_path` is ambiguous: the
    bytes ``\xff`` and the four characters ``\xff`` show the same), else None. JSON output's ``path_bytes``."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")
    return None


def point_id(path: str) -> str:
    """uuid5(ID_NAMESPACE, absolute path bytes): deterministic, one per file path."""
    return absolute_point_id(absolute(path))


def absolute_point_id(path: str) -> str:
    """:func:`point_id` of a path already absolute and normalised (as :func:`absolute` gives it, or as the walk
    yields them under an absolute root): the same string as ``str(uuid.uuid5(...))`` without building a ``UUID``
    (a no-op ingest computes one per file: 1M at 1M photos)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + os.fsencode(path), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def in_shard(path: str, shard_index: int, shard_count: int) -> bool:
    """``--shard K/N``: does this absolute path belong to shard K (1-based) of N?"""
    digest = hashlib.sha256(os.fsencode(absolute(path))).digest()
    return int.from_bytes(digest[:8], "big") % shard_count == shard_index - 1


def make_payload(
    *,
    path: str,
    size: int,
    mtime_ns: int,
    sha256: str,
    width: int,
    height: int,
    image_format: str | None,
    model: str,
    engine: str | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """The point's payload. ``engine`` and ``precision``: what computed its vector (``"openvino"``, ``"bf16"``),
    recorded beside ``model`` when known; ``path_bytes`` (base64) only for a path that is not valid UTF-8."""
    recorded = {"engine": engine, "precision": precision}
    payload: dict[str, Any] = {
        "path": display_path(path),
        "size": size,
        "mtime": mtime_ns / 1e9,
        "mtime_ns": mtime_ns,
        "sha256": sha256,
        "width": width,
        "height": height,
        "format": image_format or "unknown",
        "model": model,
        **{key: value for key, value in recorded.items() if value is not None},
        "indexed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    raw = path_bytes(path)
    if raw is not None:
        payload["path_bytes"] = raw
    return payload
