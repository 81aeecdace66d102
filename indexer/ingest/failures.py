"""Remembered failures: files that failed to decode, so that the next run does not decode them again.

A file that failed, and still has the same size and mtime, is reported by the next ingest as a *known*
failure without being read (``failed N (K known)``); a changed file is always tried again, and
``ingest --retry-failed`` tries them all. Each run replaces what is remembered under its folder (and its
shard): a failed file that was deleted, or that now decodes, is forgotten.

Where: ``failed.json`` beside the embedded store's collection (``DATA_DIR/<collection>/failed.json``), or,
for a server collection, beside its lock file in the local state folder (the paths are this machine's).
The file is small JSON (one entry per failed file); runs of several shards update it under a lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipindex.store.base import VectorStore

__all__ = ["FailureMemory", "Remembered", "memory_path"]

FILE_NAME = "failed.json"
FORMAT = 1
#: how long a run waits for another run (another shard) updating the file
LOCK_WAIT_S = 30.0


@dataclass(frozen=True)
class Remembered:
    """One failed file: its absolute path, the size and mtime it failed with, the reason and when."""

    path: str
    size: int
    mtime_ns: int
    reason: str
    failed_at: float


def memory_path(store: VectorStore) -> Path:
    """Where ``store``'s remembered failures live (module doc)."""
    from clipindex.store.edge import EdgeStore

    if isinstance(store, EdgeStore):
        return store.root / FILE_NAME
    lock = store.lock_path
    return lock.with_name(f"{lock.stem}.{FILE_NAME}")


class FailureMemory:
    """The remembered failures of one collection (:func:`memory_path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Remembered] = {}

    @classmethod
    def for_store(cls, store: VectorStore) -> FailureMemory:
        memory = cls(memory_path(store))
        memory.load()
        return memory

    def load(self) -> FailureMemory:
        """Read the file; a missing or unreadable one means nothing is remembered (it is only a cache)."""
        self.entries = _read(self.path)
        return self

    def known(self, path: str, size: int, mtime_ns: int) -> Remembered | None:
        """The remembered failure of ``path`` when the file has not changed since (same size and mtime)."""
        entry = self.entries.get(path)
        if entry is not None and entry.size == size and entry.mtime_ns == mtime_ns:
            return entry
        return None

    def replace(self, in_scope: Callable[[str], bool], failures: Iterable[Remembered]) -> None:
        """Forget every entry for which ``in_scope(path)`` holds, then remember ``failures``: under a lock,
        re-reading the file first (another shard may have written it meanwhile), then an atomic replace.
        Raises OSError when the file cannot be written."""
        failures = list(failures)
        if not failures and not self.path.exists():  # nothing remembered, nothing to remember: touch nothing
            self.entries = {}
            return
        with self._locked():
            entries = {p: e for p, e in _read(self.path).items() if not in_scope(p)}
            for entry in failures:
                entries[entry.path] = entry
            self.entries = entries
            if not entries and not self.path.exists():
                return
            data = {"format": FORMAT, "failed": [asdict(e) for e in sorted(entries.values(), key=lambda e: e.path)]}
            fd, tmp = tempfile.mkstemp(prefix=f".{FILE_NAME}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(data, out, indent=1)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def forget(self, paths: Iterable[str]) -> None:
        gone = set(paths)
        self.replace(lambda p: p in gone, [])

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The portable lock of :mod:`clipindex.lock` (runs of several shards update the file one at a time)."""
        from clipindex.lock import FileLock

        lock = FileLock(self.path.with_name(f".{self.path.name}.lock"))
        if not lock.acquire(timeout_s=LOCK_WAIT_S):
            raise OSError(f"{self.path}: another run held its lock for {LOCK_WAIT_S:g} s")
        try:
            yield
        finally:
            lock.release()


def new_entry(path: str, size: int, mtime_ns: int, reason: str) -> Remembered:
    return Remembered(path=path, size=size, mtime_ns=mtime_ns, reason=reason, failed_at=time.time())


def _read(path: Path) -> dict[str, Remembered]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        items = data["failed"] if isinstance(data, dict) else []
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    entries: dict[str, Remembered] = {}
    for item in items if isinstance(items, list) else []:
        try:
            entry = Remembered(
                path=str(item["path"]),
                size=int(item["size"]),
                mtime_ns=int(item["mtime_ns"]),
                reason=str(item["reason"]),
                failed_at=float(item.get("failed_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        entries[entry.path] = entry
    return entries
