"""An exclusive, non-blocking process lock that no crash can leave behind.

:class:`IngestLock` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on a lock file. The lock belongs to the
open file, and the kernel drops it when the file is closed, which includes the process dying for
any reason (SIGKILL, OOM killer, power cut of the session): there is no stale lock to clean up and
no pid-liveness guessing. While it holds the lock, the process writes ``{"pid", "since", "host",
"store"}`` into the file so that a refused process can say who holds it. The file is never deleted
(deleting a lock file lets two processes lock two different inodes).

Where the lock file lives
-------------------------
* embedded store: ``<data_dir>/<collection>/ingest.lock``, next to the shard it protects;
* server store: a local state folder, keyed by URL and collection:
  ``$CLIPINDEX_STATE_DIR`` or ``$XDG_STATE_HOME/clipindex`` or ``~/.local/state/clipindex``, then
  ``locks/<collection>-<sha256(url + NUL + collection)[:16]>.lock`` (:func:`server_lock_path`).
  It only excludes ingests started *on this machine*; two machines ingesting into one server
  collection are not excluded (Qdrant itself stays consistent: upserts are idempotent by id).

flock is reliable on local filesystems; on NFS it depends on the mount (``local_lock``, NFSv4).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

from indexer.errors import LockHeldError, StoreError

#: how long a refused ingest waits for the lock holder's note (pid, since) before reporting what it read
HOLDER_NOTE_WAIT_S = 1.0

__all__ = ["IngestLock", "default_state_dir", "server_lock_path"]


def default_state_dir() -> Path:
    """Local state folder: ``$CLIPINDEX_STATE_DIR``, ``$XDG_STATE_HOME/clipindex`` or
    ``~/.local/state/clipindex``."""
    explicit = os.environ.get("CLIPINDEX_STATE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "clipindex"


def _normalized_url(url: str) -> str:
    """scheme://host:port/path, lower-cased host, no credentials, no query: the lock key."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 6333)
    except ValueError:
        return url
    host = (parts.hostname or "").lower()
    return f"{parts.scheme}://{host}:{port}{parts.path.rstrip('/')}"


def server_lock_path(url: str, collection: str, state_dir: Path | None = None) -> Path:
    """The lock file guarding ingests into ``collection`` on the server at ``url``."""
    key = hashlib.sha256(f"{_normalized_url(url)}\0{collection}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", collection)[:64]
    return (state_dir or default_state_dir()) / "locks" / f"{safe}-{key}.lock"


class IngestLock:
    """``with IngestLock(path, store="..."):`` one ingest at a time per store.

    Raises :class:`~indexer.errors.LockHeldError` at once (never waits) when another process (or
    another ``IngestLock`` in this process) holds it. The lock is not inherited by subprocesses.
    """

    def __init__(self, path: Path, store: str | None = None) -> None:
        self.path = Path(path)
        self.store = store or str(self.path.parent)
        self._file: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        if self._file is not None:
            raise RuntimeError(f"{self.path} is already held by this IngestLock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # "a+": create if missing, never truncate before we own the lock
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while held
        except OSError as e:
            blocker = next((p for p in (self.path.parent, *self.path.parent.parents) if p.is_file()), None)
            if blocker is not None:  # mkdir says "File exists" about a file where a folder must go
                raise StoreError(
                    f"{blocker} is a file where the store needs a folder; move it away or choose another --data-dir"
                ) from e
            raise StoreError(f"cannot create the lock file {self.path}: {e.strerror or e}") from e
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _read_holder(f)
            # The holder writes its note just after taking the lock (and a killed holder's note stays until the
            # next one replaces it): give it a moment, so that the message names the process that holds it.
            deadline = time.monotonic() + HOLDER_NOTE_WAIT_S
            while not _live_holder(holder) and time.monotonic() < deadline:
                time.sleep(0.02)
                holder = _read_holder(f)
            f.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LockHeldError(_held_message(self.store, holder, self.path)) from None
            raise StoreError(f"cannot lock {self.path}: {e.strerror or e}") from e
        f.seek(0)
        f.truncate()
        info = {
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            "store": self.store,
        }
        f.write(json.dumps(info) + "\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        f, self._file = self._file, None
        if f is None:
            return
        try:
            f.seek(0)
            f.truncate()  # no holder any more; the file itself stays
            f.flush()
        except OSError:
            pass
        finally:
            f.close()  # closing the file releases the flock

    def __enter__(self) -> IngestLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        if self._file is not None:
            self._file.close()


def _live_holder(holder: dict[str, Any]) -> bool:
    """True when the note names a process: one alive on this host, or any on another host."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _read_holder(f: IO[str]) -> dict[str, Any]:
    try:
        f.seek(0)
        data = json.loads(f.read() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _held_message(store: str, holder: dict[str, Any], path: Path) -> str:
    pid = holder.get("pid", "?")
    since = holder.get("since", "an unknown time")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (
        f"another ingest is running on {store} (pid {pid}{where} since {since}); "
        f"wait for it to finish or stop it (lock file: {path})"
    )
