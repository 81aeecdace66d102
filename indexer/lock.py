"""Process locks that no crash can leave behind, on POSIX and Windows.

:class:`FileLock` is an exclusive lock on a file taken with the operating system's own primitive, through
``filelock.lock_descriptor``: ``flock`` on POSIX, ``LockFileEx`` on Windows. The lock belongs to the open
file, so the OS drops it when its holder exits or is killed (SIGKILL, the OOM killer): there is no stale lock
to clean up. Where neither primitive exists, a marker file whose holder is judged by pid liveness stands in.
Lock files are never deleted (deleting one lets two processes lock two different files).

A holder may leave a *note* beside the lock (``<lock>.json``: pid, host, role, since), so that a process that
is refused or kept waiting can say who holds it. The note is a separate file because Windows locks are
mandatory: another process cannot read a locked byte.

:class:`IngestLock` is one ingest at a time per store, refused at once. The turn-taking of the embedded
store's readers and its writer is :mod:`clipindex.store.turns`; ``docs/operations.md`` describes both.
Server stores keep their ingest lock in a local state folder (:func:`server_lock_path`); it only excludes
ingests started on this machine.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import filelock

from clipindex.errors import LockHeldError, StoreError
from clipindex.settings import default_state_dir

#: how long a refused ingest waits for the lock holder's note (pid, since) before reporting what it read
HOLDER_NOTE_WAIT_S = 1.0
#: a refused IngestLock tries again for this long: a status probe holds the lock for microseconds
INGEST_RETRY_S = 0.25

__all__ = [
    "FileLock",
    "IngestLock",
    "default_state_dir",
    "holder_note_path",
    "live_holder",
    "read_holder_note",
    "read_json_file",
    "remove_holder_note",
    "server_lock_path",
    "write_holder_note",
]


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


# --- the primitive ------------------------------------------------------------------------------------------


class FileLock:
    """``FileLock(path)``: an exclusive lock on ``path``, released by the OS when its holder dies.

    Not re-entrant: a second ``FileLock`` on the same path, in this process or another, is refused while the
    first holds it. Parent folders are created on the first acquire.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._marker: Path | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None or self._marker is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; never waits."""
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this FileLock")
        fd = self._open()
        try:
            got = filelock.lock_descriptor(fd, blocking=False)
        except OSError as e:
            os.close(fd)
            if e.errno == errno.ENOSYS:  # no native lock on this platform
                return self._try_marker()
            raise StoreError(f"cannot lock {self.path}: {e.strerror or e}") from e
        if not got:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, timeout_s: float | None = None, poll_s: float = 0.02) -> bool:
        """Wait up to ``timeout_s`` seconds (None: forever) for the lock; False when the wait ran out."""
        deadline = None if timeout_s is None else time.monotonic() + max(0.0, timeout_s)
        while not self.try_acquire():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        marker, self._marker = self._marker, None
        if fd is not None:
            with contextlib.suppress(OSError):
                filelock.unlock_descriptor(fd)
            os.close(fd)  # closing alone would release it too
        if marker is not None:
            with contextlib.suppress(OSError):
                marker.unlink()

    def __enter__(self) -> FileLock:
        if not self.try_acquire():
            raise LockHeldError(f"{self.path} is locked by another process")
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            blocker = next((p for p in (self.path.parent, *self.path.parent.parents) if p.is_file()), None)
            if blocker is not None:  # mkdir says "File exists" about a file where a folder must go
                raise StoreError(
                    f"{blocker} is a file where the store needs a folder; move it away or choose another --data-dir"
                ) from e
            raise StoreError(f"cannot create the lock file {self.path}: {e.strerror or e}") from e

    def _try_marker(self) -> bool:
        """No native lock: an O_EXCL marker file naming its holder; a dead holder's marker is taken over."""
        marker = self.path.with_name(self.path.name + ".held")
        for _ in range(2):
            try:
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_json_file(marker)
                if holder.get("pid") == os.getpid() or live_holder(holder) or not holder:
                    return False
                with contextlib.suppress(OSError):
                    marker.unlink()  # its holder is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
            self._marker = marker
            return True
        return False


# --- holder notes -------------------------------------------------------------------------------------------


def holder_note_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".json")


def write_holder_note(lock_path: Path, **fields: Any) -> dict[str, Any]:
    """Write ``<lock>.json`` atomically: pid, host, since and ``fields``. Only the lock's holder calls this."""
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "since_epoch": time.time(),
        **fields,
    }
    path = holder_note_path(lock_path)
    with contextlib.suppress(OSError):  # the note only helps messages: never fail a run over it
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(note, f)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return note


def remove_holder_note(lock_path: Path) -> None:
    with contextlib.suppress(OSError):
        holder_note_path(lock_path).unlink()


def read_holder_note(lock_path: Path) -> dict[str, Any]:
    """The holder's note, or {} when there is none (or it cannot be read)."""
    return read_json_file(holder_note_path(lock_path))


def read_json_file(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def live_holder(holder: dict[str, Any]) -> bool:
    """True when the note names a process: one alive on this host, or any on another host."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") not in (None, socket.gethostname()):
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there; a note on a held lock is trusted
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def wait_for_live_note(lock_path: Path, wait_s: float = HOLDER_NOTE_WAIT_S) -> dict[str, Any]:
    """The note of the lock's holder; a new holder writes it just after locking, so wait a moment for it."""
    holder = read_holder_note(lock_path)
    deadline = time.monotonic() + wait_s
    while not live_holder(holder) and time.monotonic() < deadline:
        time.sleep(0.02)
        holder = read_holder_note(lock_path)
    return holder


# --- one ingest per store -----------------------------------------------------------------------------------


class IngestLock:
    """``with IngestLock(path, store="..."):`` one ingest at a time per store.

    Raises :class:`~clipindex.errors.LockHeldError` at once (it never waits for the holder) when another
    process, or another ``IngestLock`` in this process, holds it. The lock is not inherited by subprocesses.
    """

    def __init__(self, path: Path, store: str | None = None) -> None:
        self.path = Path(path)
        self.store = store or str(self.path.parent)
        self._lock = FileLock(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> None:
        if self._lock.held:
            raise RuntimeError(f"{self.path} is already held by this IngestLock")
        if not self._lock.acquire(timeout_s=INGEST_RETRY_S):
            holder = wait_for_live_note(self.path)
            raise LockHeldError(_held_message(self.store, holder, self.path))
        write_holder_note(self.path, role="ingest", store=self.store)

    def release(self) -> None:
        if self._lock.held:
            remove_holder_note(self.path)  # before the lock goes: a new holder's note is never removed
        self._lock.release()

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


def is_locked(path: Path) -> bool:
    """Whether another process holds the lock on ``path`` right now (probes it for an instant)."""
    if not path.exists():
        return False
    probe = FileLock(path)
    if probe.try_acquire():
        probe.release()
        return False
    return True


def _held_message(store: str, holder: dict[str, Any], path: Path) -> str:
    pid = holder.get("pid", "?")
    since = holder.get("since", "an unknown time")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (
        f"another ingest is running on {store} (pid {pid}{where} since {since}); "
        f"wait for it to finish or stop it (lock file: {path})"
    )
