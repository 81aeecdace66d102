"""How a running ``clipindex serve`` is found: a record beside the store's ingest lock.

While it runs, serve holds an exclusive lock on ``<lock>.serve.lock`` (released by the OS when the process dies)
and keeps ``<lock>.serve.json`` beside it: pid, host, URL, port and token (the file is private to its user, mode
0600). :func:`find_serve` trusts a record only while its lock is held by a live process on this host, so a killed
serve is never asked. The ingest lock is per store and collection (:attr:`VectorStore.lock_path`), so a record
names exactly the store and collection its server answers for. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipindex.lock import FileLock, is_locked, live_holder

__all__ = ["ServeRecord", "embedded_lock_path", "find_serve", "record_paths", "remove_record", "write_record"]


@dataclass(frozen=True)
class ServeRecord:
    """What a client needs to talk to a running serve."""

    pid: int
    host: str
    #: the base URL to reach it from this machine, e.g. ``http://127.0.0.1:8765``
    url: str
    port: int
    token: str | None
    store: str
    collection: str
    model_dir: str
    model: str


def embedded_lock_path(data_dir: Path | None, collection: str) -> Path:
    """The ingest lock of an embedded store's collection, as :attr:`EdgeStore.lock_path` names it, without
    importing the store: ``clipindex search`` looks for a running serve before anything heavy loads."""
    from clipindex.settings import default_data_dir

    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return root / collection / "ingest.lock"


def record_paths(lock_path: Path) -> tuple[Path, Path]:
    """``(record, lock)`` for the store whose ingest lock is ``lock_path``."""
    lock_path = Path(lock_path)
    return lock_path.with_name(lock_path.name + ".serve.json"), lock_path.with_name(lock_path.name + ".serve.lock")


def claim(lock_path: Path) -> FileLock | None:
    """Take the serve lock of this store: one serve per store and collection. None when another serve holds it."""
    _record, lock = record_paths(lock_path)
    held = FileLock(lock)
    return held if held.try_acquire() else None


def write_record(lock_path: Path, record: ServeRecord) -> Path:
    """Write the record atomically, readable by its user only (it holds the token)."""
    path, _lock = record_paths(lock_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(record), f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def remove_record(lock_path: Path) -> None:
    path, _lock = record_paths(lock_path)
    with contextlib.suppress(OSError):
        path.unlink()


def find_serve(lock_path: Path) -> ServeRecord | None:
    """The running serve of this store, or None: no record, its lock is free (the server died), it runs on
    another host, or the record cannot be read."""
    path, lock = record_paths(lock_path)
    if not path.is_file() or not is_locked(lock):
        return None
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        record = ServeRecord(**data)
    except (OSError, ValueError, TypeError):
        return None
    if record.host != socket.gethostname() or not live_holder({"pid": record.pid, "host": record.host}):
        return None
    return record
