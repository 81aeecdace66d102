"""Turn-taking on the embedded store: readers and one writer share a Qdrant Edge shard, one at a time.

Qdrant Edge lets one process at a time have a shard open. Every process that opens one first takes the
store's *turn* (an exclusive :class:`~clipindex.lock.FileLock` on ``<store>/store.lock``) and gives it back when
it closes the shard. The protocol:

* A process that finds the turn taken registers as *waiting* (it locks its own file in ``<store>/waiting/``)
  and polls the turn for up to its ``wait_s``; then it raises :class:`~clipindex.errors.StoreBusyError`, naming
  the holder from the turn's note.
* The long-running writer (ingest) calls :meth:`StoreTurns.waiting_readers` between batches: one listing of
  a folder that is normally empty. When someone waits, the store closes its shard (which flushes it),
  :meth:`StoreTurns.let_in` gives the turn back, and :meth:`StoreTurns.take_back` takes it back once every
  process that was waiting has had it.
* Every lock is released by the OS when its holder dies, so a killed reader or writer never blocks the next
  process, and a waiting file whose owner died is removed by the next writer that sees it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from clipindex.errors import StoreBusyError
from clipindex.lock import FileLock, is_locked, remove_holder_note, wait_for_live_note, write_holder_note
from clipindex.settings import DEFAULT_WAIT_S

__all__ = ["DEFAULT_WAIT_S", "TURN_FILE", "WAITING_DIR", "StoreTurns"]

TURN_FILE = "store.lock"
WAITING_DIR = "waiting"
#: a waiting file nobody holds is left alone this long (its owner may be about to lock it), then removed
STALE_WAITER_S = 10.0
#: seconds between two tries for a turn
POLL_S = 0.02


class StoreTurns:
    """The turn on the store in ``root`` for one process: ``take``, ``give_back``, and for the writer,
    ``waiting_readers``, ``let_in`` and ``take_back``."""

    def __init__(self, root: Path, *, role: str, store: str) -> None:
        self.root = Path(root)
        self.role = role
        self.store = store
        self.path = self.root / TURN_FILE
        self._lock = FileLock(self.path)

    @property
    def held(self) -> bool:
        return self._lock.held

    def take(self, wait_s: float) -> None:
        """Take the turn, waiting up to ``wait_s`` seconds; :class:`StoreBusyError` (exit 75) past that."""
        if self._lock.held:
            return
        if not self._lock.try_acquire():
            started = time.monotonic()
            with self._waiting():
                got = self._lock.acquire(timeout_s=wait_s, poll_s=POLL_S)
            if not got:
                raise StoreBusyError(self._busy_message(time.monotonic() - started))
        write_holder_note(self.path, role=self.role, store=self.store)

    def give_back(self) -> None:
        if self._lock.held:
            remove_holder_note(self.path)  # before the lock goes: the next holder's note is never removed
        self._lock.release()

    def waiting_readers(self) -> list[Path]:
        """The waiting files of live processes waiting for the turn (cheap: one listing of an empty folder)."""
        folder = self.root / WAITING_DIR
        try:
            entries = [e for e in os.scandir(folder) if e.name.endswith(".lock")]
        except OSError:
            return []
        waiting: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            probe = FileLock(path)
            if not probe.try_acquire():
                waiting.append(path)  # locked: its owner is alive and waiting
                continue
            probe.release()
            with contextlib.suppress(OSError):
                if time.time() - path.stat().st_mtime > STALE_WAITER_S:
                    path.unlink()  # its owner died while waiting
        return waiting

    def let_in(self) -> None:
        """Give the turn to the waiting processes (the caller has closed its shard)."""
        self.give_back()

    def take_back(self, waiting: list[Path], wait_s: float) -> None:
        """After :meth:`let_in`: once every process in ``waiting`` has had its turn (or given up), take the turn
        back. Raises :class:`StoreBusyError` when one keeps it past ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(is_locked(p) for p in waiting):
            time.sleep(POLL_S / 2)
        self.take(wait_s)

    def _waiting(self) -> contextlib.AbstractContextManager[None]:
        return _Waiting(self.root / WAITING_DIR / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock")

    def _busy_message(self, waited_s: float) -> str:
        holder = wait_for_live_note(self.path)
        return f"{self.store} is in use by {_describe_holder(holder)}; waited {waited_s:.0f} s for it " + (
            "(raise --wait / CLIPINDEX_WAIT, or try again when it has finished)"
        )


class _Waiting:
    """Holds a locked file in ``waiting/`` while this process waits: the writer sees it and hands over."""

    def __init__(self, path: Path) -> None:
        self.lock = FileLock(path)

    def __enter__(self) -> None:
        # A writer probing the folder holds a new file's lock for an instant: try again for a moment.
        self.lock.acquire(timeout_s=10.0, poll_s=0.005)

    def __exit__(self, *exc: object) -> None:
        held = self.lock.held
        self.lock.release()
        if held:
            with contextlib.suppress(OSError):
                self.lock.path.unlink()


def _describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    role = holder.get("role") or "another process"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"{role} (pid {holder.get('pid', '?')}{where}, since {holder.get('since', 'an unknown time')})"
