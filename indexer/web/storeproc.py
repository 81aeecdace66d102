"""Store reads in a child process (:class:`StoreProcess`), so that no store call can stall the server.

Qdrant Edge holds the GIL while it searches and while it opens a shard: at 1M points a search holds it ~30 ms
(over 100 ms when its pages must be read) and a reopen after a handover to an ingest close to 100 ms. In the
server's own process every such call would stop the event loop and every other request for that long. So the
store lives in a child forked before the server starts anything (no threads, no model loaded yet): it keeps the
store open between requests and hands it to waiting processes (:class:`~clipindex.store.resident.ResidentStore`),
and the server sends it one request at a time over a pipe. The server's threads wait on the pipe with the GIL
released. A child that dies turns every later read into a :class:`~clipindex.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from clipindex.errors import NothingIndexedError, StoreError
from clipindex.model.locate import ModelLocation
from clipindex.ops.results import SearchResult
from clipindex.ops.search import search_vector
from clipindex.ops.status import collect_report
from clipindex.store.base import CollectionInfo, VectorStore
from clipindex.store.resident import ResidentStore

__all__ = ["StoreProcess"]


def _open(store: VectorStore) -> None:
    with contextlib.suppress(NothingIndexedError):
        store.collection_info()


def _search(store: VectorStore, vector: np.ndarray, options: dict[str, Any]) -> list[SearchResult]:
    return search_vector(store, vector, **options)


def _vector(store: VectorStore, point_id: str) -> np.ndarray | None:
    store.collection_info()
    return store.get_vectors([point_id]).get(point_id)


def _payload(store: VectorStore, point_id: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    try:
        store.collection_info()
    except NothingIndexedError:
        return None
    return store.get_payloads([point_id], fields).get(point_id)


def _info(store: VectorStore) -> tuple[CollectionInfo, int]:
    return store.collection_info(), store.count(exact=False)


def _scroll_vectors(store: VectorStore, fields: tuple[str, ...], offset: str | None, page_size: int) -> Any:
    store.collection_info()
    return store.scroll_vectors(fields, offset, page_size)


def _vectors(store: VectorStore, ids: list[str]) -> dict[str, np.ndarray]:
    store.collection_info()
    return store.get_vectors(ids)


def _payloads(store: VectorStore, ids: list[str], fields: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    store.collection_info()
    return store.get_payloads(ids, fields)


def _release(store: VectorStore) -> None:
    store.release_memory()


def _report(store: VectorStore, location: ModelLocation) -> dict[str, Any]:
    return collect_report(location, store).as_json()


OPS: dict[str, Callable[..., Any]] = {
    "open": _open,
    "search": _search,
    "vector": _vector,
    "payload": _payload,
    "report": _report,
    "info": _info,
    "scroll_vectors": _scroll_vectors,
    "vectors": _vectors,
    "payloads": _payloads,
    "release": _release,
}


def _child(conn: Any, store: VectorStore) -> None:
    resident = ResidentStore(store)
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:
                return
            if request is None:
                return
            op, args = request
            try:
                run = OPS[op]
                answer: tuple[bool, Any] = (True, resident.read(lambda s: run(s, *args)))  # noqa: B023
            except Exception as exc:  # sent back and raised in the server, typed as it was raised here
                answer = (False, exc)
            try:
                conn.send(answer)
            except (pickle.PicklingError, TypeError, AttributeError):
                conn.send((False, StoreError(" ".join(str(answer[1]).split()))))
    finally:
        resident.close()


class StoreProcess:
    """``call(op, *args)``: one of :data:`OPS` on the store, in the child; ``close()`` stops it."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store  # never opened in this process: describe(), lock_path and collection only
        context = multiprocessing.get_context("fork")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_child, args=(child_conn, store), name="clipindex-store", daemon=True)
        self._process.start()
        child_conn.close()
        self._lock = threading.Lock()

    def call(self, op: str, *args: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((op, args))
                ok, value = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                raise StoreError(
                    f"the process reading {self.store.describe()} stopped (exit code {self._process.exitcode}); "
                    "restart clipindex serve"
                ) from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        with self._lock, contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()
