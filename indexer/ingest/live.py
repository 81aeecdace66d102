"""Live progress of a running ingest, for ``clipindex status``.

The ingest rewrites a small JSON file beside its lock (``ingest.progress.json`` next to ``ingest.lock``)
atomically: when it starts, when its walk ends, and after every batch. The file says *what* the run does; the
ingest lock says *whether* it still runs: :func:`read_live_progress` reports a run as running only while its
lock is held, so a run that ended, even by kill -9, never reads as running.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipindex.lock import is_locked, read_holder_note, read_json_file

__all__ = ["LiveProgress", "progress_path", "read_live_progress"]


def progress_path(lock_path: Path) -> Path:
    """``ingest.lock`` -> ``ingest.progress.json`` (``ingest.shard-1-of-3.lock`` likewise)."""
    return lock_path.with_name(lock_path.stem + ".progress.json")


@dataclass
class LiveProgress:
    """The writer's side: one per ingest run. Writing never fails the run (the file only informs)."""

    path: Path
    root: str
    started_at: float = field(default_factory=time.time)
    phase: str = "starting"
    #: files found to embed (None while the walk runs)
    todo: int | None = None
    #: of those, files done (embedded, reused or failed)
    done: int = 0
    #: processes let in between batches so far
    handoffs: int = 0
    _embedding_since: float | None = None

    def update(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)
        if self.phase == "embedding" and self._embedding_since is None:
            self._embedding_since = time.monotonic()
        self.write()

    def snapshot(self) -> dict[str, Any]:
        rate = eta = None
        if self._embedding_since is not None and self.done:
            elapsed = time.monotonic() - self._embedding_since
            rate = self.done / elapsed if elapsed > 0 else None
            if rate and self.todo is not None:
                eta = max(0.0, (self.todo - self.done) / rate)
        return {
            "root": self.root,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "phase": self.phase,
            "done": self.done,
            "todo": self.todo,
            "images_per_s": round(rate, 2) if rate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
            "handoffs": self.handoffs,
        }

    def write(self) -> None:
        with contextlib.suppress(OSError):  # beside the ingest's lock: the folder exists
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(self.snapshot(), f)
                os.replace(tmp, self.path)
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()


def read_live_progress(lock_path: Path) -> dict[str, Any] | None:
    """The progress of the ingest holding ``lock_path`` with ``"running": True``; a file left by a run that
    ended without removing it (killed) with ``"running": False``; None when there is no file."""
    data = read_json_file(progress_path(lock_path))
    if not data:
        return None
    # running: the lock is held, by the process that wrote the file (not a new run that has not written yet)
    holder = read_holder_note(lock_path)
    data["running"] = is_locked(lock_path) and holder.get("pid", data.get("pid")) == data.get("pid")
    return data
