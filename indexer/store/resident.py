"""A store kept open by a long-running reader (``clipindex serve``) and shared between its threads.

:class:`ResidentStore` runs each read (``read(fn)``) under one lock, so the threads of a server never use the
store at the same time. On the embedded store it keeps the shard open between reads, so a query costs the search
alone, and gives the store up within :data:`HANDOVER_POLL_S` whenever another process (a cron ingest, a
``clipindex status``) waits for it: a watcher thread calls
:meth:`~clipindex.store.edge.EdgeStore.close_if_waited_for` between reads. The next read takes its turn again
(:mod:`clipindex.store.turns`), so during an ingest a query waits at most for the batch in flight, and sees every
point upserted before it. A Qdrant server needs no turns: reads only share the lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from clipindex.store.base import VectorStore
from clipindex.store.edge import EdgeStore

__all__ = ["HANDOVER_POLL_S", "ResidentStore"]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: seconds between two looks for processes waiting for the embedded store
HANDOVER_POLL_S = 0.02


class ResidentStore:
    """``ResidentStore(store)``: ``read(fn)`` runs ``fn(store)`` alone; ``close()`` stops the watcher and closes."""

    def __init__(self, store: VectorStore, *, poll_s: float = HANDOVER_POLL_S) -> None:
        self.store = store
        self._lock = threading.Lock()
        # while the watcher hands the store over, new reads wait at this gate: a busy server cannot starve it
        self._gate = threading.Condition()
        self._handing_over = False
        self._stop = threading.Event()
        #: how many times the store was handed to a waiting process
        self.handovers = 0
        self._watcher: threading.Thread | None = None
        if isinstance(store, EdgeStore):
            self._watcher = threading.Thread(
                target=self._watch, args=(store, poll_s), name="clipindex-handover", daemon=True
            )
            self._watcher.start()

    def read(self, fn: Callable[[VectorStore], T]) -> T:
        """``fn(store)`` with the store to itself (opened by ``fn``'s first call if it was handed over)."""
        while True:
            with self._gate:
                while self._handing_over:
                    self._gate.wait()
            self._lock.acquire()
            if not self._handing_over:
                break
            self._lock.release()  # the watcher goes next: reads queued on the lock step back to the gate
        try:
            return fn(self.store)
        finally:
            self._lock.release()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            self.store.close()

    def _watch(self, store: EdgeStore, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                wanted = store.is_open and bool(store.turns.waiting_readers())
            except Exception:  # a listing that failed: look again next time
                wanted = False
            if not wanted:
                continue
            with self._gate:
                self._handing_over = True
            try:
                with self._lock:  # the read in flight finishes first; no new one starts
                    if store.close_if_waited_for():
                        self.handovers += 1
            except Exception as exc:  # the next read reopens the store and reports what is wrong
                log.warning("handing %s over failed: %s", store.describe(), exc)
            finally:
                with self._gate:
                    self._handing_over = False
                    self._gate.notify_all()
