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

from clipindex.dates import CAMERA_KEY, DATED_KEY, TAKEN_TS_KEY
from clipindex.images.exif import PhotoFacts

#: namespace of clipindex point ids (uuid5 of the absolute path bytes in it)
ID_NAMESPACE = uuid.UUID("8b6a1f2e-6c1d-5f7e-9a43-0c1a2b3c4d5e")
_NAMESPACE_BYTES = ID_NAMESPACE.bytes

#: payload keys the incremental ingest reads back for every stored point (``--prune`` then reads ``path`` of the
#: points the walk did not see)
INDEX_FIELDS: tuple[str, ...] = ("size", "mtime_ns", "sha256")
#: payload keys naming what computed the vector: the engine ("onnxruntime", "openvino") and its precision
ENGINE_FIELDS: tuple[str, ...] = ("engine", "precision")
#: the payload fields dates and cameras add (what a backfill writes)
DATE_FIELDS: tuple[str, ...] = ("taken_at", DATED_KEY, TAKEN_TS_KEY, "camera_make", "camera_model", CAMERA_KEY, "gps")
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
    facts: PhotoFacts | None = None,
    store_gps: bool = False,
) -> dict[str, Any]:
    """The point's payload. ``engine`` and ``precision``: what computed its vector (``"openvino"``, ``"bf16"``),
    recorded beside ``model`` when known; ``path_bytes`` (base64) only for a path that is not valid UTF-8;
    the date and camera fields of :func:`date_fields` (GPS only with ``store_gps``)."""
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
    payload.update(date_fields(facts or PhotoFacts(), mtime_ns, store_gps=store_gps))
    raw = path_bytes(path)
    if raw is not None:
        payload["path_bytes"] = raw
    return payload


def date_fields(facts: PhotoFacts, mtime_ns: int, *, store_gps: bool = False) -> dict[str, Any]:
    """The date and camera fields of a payload:

    * ``taken_at``: ISO 8601, the EXIF DateTimeOriginal (with its offset when the EXIF has one, else naive local
      time), or else the file's mtime in UTC; ``taken_at_source``: ``"exif"`` or ``"mtime"``;
    * ``taken_ts``: the same instant in epoch seconds (a naive EXIF time read as UTC);
    * ``camera_make``/``camera_model`` when known (``model`` names the CLIP model), and ``camera_lc``: every run of
      consecutive lowercase words of them;
    * ``gps`` (``{"lat", "lon"}``) only when ``store_gps`` and the EXIF has it.
    """
    fields: dict[str, Any] = {}
    if facts.taken_at is not None:
        taken = facts.taken_at
        fields["taken_at"] = taken.isoformat()
        fields[DATED_KEY] = "exif"
        aware = taken if taken.tzinfo is not None else taken.replace(tzinfo=timezone.utc)
        fields[TAKEN_TS_KEY] = aware.timestamp()
    else:
        stamp = datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc)
        fields["taken_at"] = stamp.isoformat()
        fields[DATED_KEY] = "mtime"
        fields[TAKEN_TS_KEY] = mtime_ns / 1e9
    words: list[str] = []
    for key in ("make", "model"):
        value = getattr(facts, key)
        if value:
            fields[f"camera_{key}"] = value
            parts = value.lower().split()
            # every run of consecutive words: "canon", "eos r5", "canon eos r5" all match "Canon EOS R5"
            words.extend(" ".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
    if words:
        fields[CAMERA_KEY] = sorted(set(words))
    if store_gps and facts.gps is not None:
        fields["gps"] = {"lat": facts.gps[0], "lon": facts.gps[1]}
    return fields
