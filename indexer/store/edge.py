"""The embedded store: one Qdrant Edge shard per collection (``qdrant-edge-py`` 0.9, module ``qdrant_edge``),
in-process, no server.

Promises: acknowledged writes survive the process being killed (the engine's write-ahead log); one process at a
time has a store open, the others wait their turn (:mod:`clipindex.store.turns`); writes are refused, not crashed
on, when the filesystem is nearly full; search scans an int8 copy of the sealed segments' vectors and rescores
the best candidates in float32, so scores are exact cosines; a folder filter uses the ``dirs`` keyword index.
:func:`edge_config` is what clipindex creates and re-applies on every open (memory-mapped vectors, payloads and
indexes; no HNSW graph; int8 scalar quantization); ingest calls ``optimize()`` at every periodic flush and at
the end of a run. docs/design.md records what we use of the qdrant_edge API and the measurements behind these
choices.

Layout of ``data_dir/<collection>/``
------------------------------------
``collection.json`` (model name and dimension, see :mod:`clipindex.store.base`), ``shard/`` (the Edge
shard), ``last_ingest.json`` (:meth:`EdgeStore.save_summary`), ``ingest.lock``
(:class:`clipindex.lock.IngestLock`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from clipindex.errors import (
    CollectionMismatchError,
    CollectionNotFoundError,
    StoreBusyError,
    StoreDamagedError,
    StoreError,
)
from clipindex.settings import DEFAULT_COLLECTION, DEFAULT_LIMIT, DEFAULT_WAIT_S, min_free_bytes_from_env
from clipindex.store.base import (
    CAMERA_KEY,
    DIRS_KEY,
    FLOAT_INDEXED_KEYS,
    INDEXED_KEYS,
    INTERNAL_KEYS,
    META_FORMAT,
    MODEL_KEY,
    PATH_KEY,
    TAKEN_TS_KEY,
    UNKNOWN_MODEL,
    CollectionInfo,
    Hit,
    Lending,
    Point,
    SearchFilter,
    VectorStore,
    as_vector,
    check_id,
    mismatch_message,
    normalize_prefix,
    require_open,
    stored_payload,
    vector_page,
    vectors_by_id,
)
from clipindex.store.prefetch import prefetch_shard
from clipindex.store.turns import StoreTurns

if TYPE_CHECKING:
    from qdrant_edge import ConditionType

__all__ = ["EdgeStore", "cleanup_orphan_temp_segments"]

#: new collections keep their vectors memory-mapped rather than loaded into RAM (module doc: Memory)
VECTORS_ON_DISK = True
#: an appendable segment holding more than this many KB of vectors is sealed by :meth:`EdgeStore.optimize` into an
#: immutable memory-mapped one (the engine's default: ~5k points of 512-d float32)
INDEXING_THRESHOLD_KB = 10_000
#: sealed and merged segments stay under this many KB of vectors (~128k points of 512-d float32): it bounds the
#: time and memory of one optimisation, and fewer, larger segments open faster (docs/operations.md, Memory at scale)
MAX_SEGMENT_KB = 262_144
#: free space (beyond CLIPINDEX_MIN_FREE_MB) an optimisation needs: the segment it writes, with payloads and indexes
OPTIMIZE_HEADROOM_BYTES = 2 * MAX_SEGMENT_KB * 1024
#: scalar quantization: each float32 coordinate maps to int8 between this quantile of the segment's values and its
#: mirror (outliers clipped); 4x smaller than the vectors, scanned with integer SIMD
QUANTILE = 0.99
#: where the int8 copy lives when a process opens the shard (module doc: Search)
QUANTIZED_MEMORY = qe.Memory.Cold
#: candidates rescored with the float32 vectors, as a multiple of the limit (recall@10 vs exact: results.md)
OVERSAMPLING = 4.0
#: a full read of the payloads (:meth:`EdgeStore.iter_payloads`: ingest's index) gives back the pages it mapped
#: (closes and reopens the shard) every this many points, so they do not pile up on top of the run's own memory
RELEASE_EVERY_POINTS = 250_000
#: the engine may hold its WAL lock for a moment after another process closed the shard: retry the open this long
OPEN_RETRY_S = 5.0
#: while a batch's inference runs, waiting readers are looked for this often (seconds)
LEND_POLL_S = 0.02
#: free space any process needs to open a shard, whatever ``CLIPINDEX_MIN_FREE_MB`` says: the engine writes through
#: memory maps when it opens one (about 10 MB on tmpfs, the first open after an ingest), and a page written on a
#: full filesystem kills the process with SIGBUS instead of raising
OPEN_MIN_FREE_BYTES = 32 * 2**20


def edge_config(vector_dim: int) -> qe.EdgeConfig:
    """The shard configuration clipindex creates, and applies on every open (module doc: Memory, Search).

    Vectors memory-mapped; no HNSW graph (``m=0``): an optimisation seals the appendable segment into a compact
    immutable one (seconds per 100k points, not minutes); payload and id tracker of sealed segments memory-mapped
    ("cold"); sealed segments also hold an int8 copy of their vectors (:data:`QUANTILE`, memory per
    :data:`QUANTIZED_MEMORY`) that search scans before rescoring the best candidates with the float32 vectors.
    """
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=vector_dim, distance=qe.Distance.Cosine, on_disk=VECTORS_ON_DISK),
        hnsw_config=qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000),
        quantization_config=qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=QUANTILE, memory=QUANTIZED_MEMORY),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=INDEXING_THRESHOLD_KB, max_segment_size=MAX_SEGMENT_KB),
        payload_memory=qe.Memory.Cold,
        id_tracker_memory=qe.Memory.Cold,
    )


def search_params(exact: bool = False) -> qe.SearchParams:
    """Query parameters: the int8 scan, then float32 rescoring of ``limit * OVERSAMPLING`` candidates per segment
    (a segment without an int8 copy, e.g. the appendable one, is scanned in float32); ``exact`` skips the int8
    copy."""
    if exact:
        return qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))
    return qe.SearchParams(quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING))


log = logging.getLogger(__name__)

T = TypeVar("T")

META_FILE = "collection.json"
SUMMARY_FILE = "last_ingest.json"
LOCK_FILE = "ingest.lock"
SHARD_DIR = "shard"
#: :meth:`EdgeStore.rebuild_shard` builds the new shard here, renames it to :data:`READY_DIR` once it is complete,
#: and keeps the shard it replaces as ``shard.damaged-<time>``
REBUILD_DIR = "shard.rebuild"
READY_DIR = "shard.ready"
DAMAGED_PREFIX = "shard.damaged-"
#: :meth:`EdgeStore.adopt` names the shard it replaces this way, until it deletes it
REPLACED_PREFIX = "shard.replaced-"
#: files of a collection that are switched with its shard (:meth:`EdgeStore.adopt`)
SWAPPED_FILES = ("collection.json", "last_ingest.json", "failed.json")
TEMP_SEGMENTS = "temp_segments"
_RETRIEVE_CHUNK = 1000
#: writes are refused when the data dir's filesystem has less free space than
#: :data:`~clipindex.settings.DEFAULT_MIN_FREE_BYTES` (``CLIPINDEX_MIN_FREE_MB``): the engine writes through
#: memory-mapped files, and a page written on a full filesystem kills the process with SIGBUS instead of raising.
_COLLECTION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def cleanup_orphan_temp_segments(shard_dir: Path) -> list[Path]:
    """Remove what an interrupted ``optimize()`` left under ``shard_dir/temp_segments``.

    Only when no process has the shard open: we take the same ``flock`` the engine takes on
    ``shard_dir/wal`` (non-blocking) and leave everything alone when it is held, since a live
    optimiser may be writing there. Returns the removed paths (logged at INFO).
    """
    temp = shard_dir / TEMP_SEGMENTS
    wal = shard_dir / "wal"
    try:
        entries = sorted(temp.iterdir())
    except OSError:
        return []
    if not entries or not wal.is_dir():
        return []
    if not _wal_unlocked(wal):
        log.debug("%s is open elsewhere; leaving %s alone", shard_dir, temp)
        return []
    removed: list[Path] = []
    for entry in entries:
        size = _tree_size(entry)
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError as e:
            raise StoreError(f"cannot remove the leftover of an interrupted optimisation {entry}: {e}") from e
        log.info("removed %s (%.0f MB) left by an interrupted optimisation", entry, size / 1e6)
        removed.append(entry)
    return removed


def _wal_unlocked(wal: Path) -> bool:
    """Whether no process has the shard open: the engine's own ``flock`` on ``wal`` is free.

    POSIX only (the engine locks the folder; folders cannot be locked on Windows): elsewhere the store's turn,
    which every clipindex process takes before it opens the shard, is what says so.
    """
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(wal, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the flock
    return True


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return path.stat().st_size if path.exists() else 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def _prefetch_limit() -> int | None:
    """Prefetch at most a quarter of the machine's RAM: past that the pages would push each other out."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError):
        return None


def _atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON so that a crash leaves either the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder cannot be opened to fsync; os.replace is durable enough there
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _fsync_dir(path: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder cannot be opened to fsync
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (a shard about to replace another)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


@dataclass(frozen=True)
class RebuiltShard:
    """What :meth:`EdgeStore.rebuild_shard` did: the points in the new shard, and where the old one went."""

    points: int
    kept_aside: Path | None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StoreError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StoreError(f"{path} is not valid JSON ({e}); fix or delete it") from e
    if not isinstance(data, dict):
        raise StoreError(f"{path} does not hold a JSON object; fix or delete it")
    return data


class EdgeStore(VectorStore):
    """The embedded default: ``data_dir/<collection>/shard`` is a Qdrant Edge shard.

    Nothing touches the disk until :meth:`ensure_collection` or :meth:`collection_info`. One process at a
    time may have the shard open: opening it takes the store's turn (:mod:`clipindex.store.turns`), waiting up to
    ``wait_s`` seconds for it (then :class:`~clipindex.errors.StoreBusyError`); :meth:`close` gives it back. An
    ingest calls :meth:`yield_to_readers` between batches. ``role`` names this process to those kept waiting.
    """

    def __init__(
        self,
        data_dir: Path,
        collection: str = DEFAULT_COLLECTION,
        *,
        min_free_bytes: int | None = None,
        wait_s: float = DEFAULT_WAIT_S,
        role: str = "a clipindex process",
    ) -> None:
        if not _COLLECTION_RE.match(collection):
            raise StoreError(f"invalid collection name {collection!r}: use letters, digits, '_', '-' and '.'")
        self.data_dir = Path(data_dir).expanduser()
        self.collection = collection
        self.root = self.data_dir / collection
        self.shard_dir = self.root / SHARD_DIR
        self._shard: qe.EdgeShard | None = None
        self._info: CollectionInfo | None = None
        #: the processes close_if_waited_for() handed the store to (the next open lets them go first)
        self._let_in: list[Path] = []
        if wait_s < 0 or wait_s != wait_s:
            raise ValueError(f"wait_s must be a number of seconds >= 0, not {wait_s}")
        self.wait_s = float(wait_s)
        self.turns = StoreTurns(self.root, role=role, store=self.describe())
        if min_free_bytes is None:
            min_free_bytes = min_free_bytes_from_env()
        self.min_free_bytes = min_free_bytes
        #: read the shard's hot files sequentially before the engine maps them (:mod:`clipindex.store.prefetch`)
        self.prefetch = True
        #: search scans float32 vectors only, skipping the int8 copy (benchmarks, and tests of recall)
        self.exact_search = False

    # --- lifecycle ----------------------------------------------------------------------------

    def describe(self) -> str:
        return f"embedded store {self.root}"

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    def ensure_collection(
        self, vector_dim: int, model_name: str, *, create: bool = True, record: Mapping[str, Any] | None = None
    ) -> CollectionInfo:
        if vector_dim <= 0:
            raise ValueError(f"vector_dim must be positive, not {vector_dim}")
        if not model_name:
            raise ValueError("model_name must not be empty")
        if self._shard is not None and self._info is not None:
            if self._info.model_name == UNKNOWN_MODEL and self._info.vector_dim == vector_dim:
                self._info = CollectionInfo(model_name=model_name, vector_dim=vector_dim)
                self._write_meta(self._info)  # opened by collection_info() with nothing to tell
            self._check(self._info, vector_dim, model_name)
            return self._info

        meta = self._read_meta()
        if self._shard_exists():
            if meta is not None:
                self._check(meta, vector_dim, model_name)  # before the shard is even opened
            # our config names the dimension: apply it only when the metadata has confirmed it (else derive first)
            shard = self._open_shard(meta.vector_dim if meta is not None else None)
            if self._read_meta() != meta:  # switched (adopt, or a swap finished) while this process waited
                self._close_shard(shard)
                return self.ensure_collection(vector_dim, model_name, create=create, record=record)
            try:
                info = meta or self._derive_info(shard, fallback_model=model_name)
                self._check(info, vector_dim, model_name)
                if meta is None:
                    self._write_meta(info)
                self._ensure_indexes(shard)
            except BaseException:
                self._close_shard(shard)
                raise
            self._shard, self._info = shard, info
            return info

        if not create:
            raise self._not_found()
        self._check_free_space()
        self._check_open_space()
        self.turns.take(self.wait_s)
        if self._shard_exists():  # created by another process while this one waited for its turn
            self.turns.give_back()
            return self.ensure_collection(vector_dim, model_name, create=create, record=record)
        try:
            info = CollectionInfo(model_name=model_name, vector_dim=vector_dim, created=True)
            self._write_meta(info, record)
            config = edge_config(vector_dim)
            shard = self._engine("create the shard", lambda: qe.EdgeShard.create(str(self.shard_dir), config))
        except BaseException:
            self.turns.give_back()
            raise
        try:
            self._ensure_indexes(shard)
        except BaseException:
            self._close_shard(shard)
            raise
        self._shard, self._info = shard, info
        log.info("created %s for %s (%d-d)", self.describe(), model_name, vector_dim)
        return info

    def collection_info(self) -> CollectionInfo:
        if self._info is not None:
            return self._info
        if not self._shard_exists():
            raise self._not_found()
        meta = self._read_meta()
        shard = self._open_shard(meta.vector_dim if meta is not None else None)
        if self._read_meta() != meta:  # switched (adopt, or a swap finished) while this process waited
            self._close_shard(shard)
            return self.collection_info()
        try:
            info = meta or self._derive_info(shard, fallback_model=None)
        except BaseException:
            self._close_shard(shard)
            raise
        self._shard, self._info = shard, info
        return info

    def flush(self) -> None:
        shard = self._need()
        self._engine("flush", shard.flush)

    def close(self) -> None:
        shard, self._shard = self._shard, None
        self._info = None
        if shard is not None:
            try:
                self._engine("flush", shard.flush)
            finally:
                self._close_shard(shard)
        self.turns.give_back()

    def release_memory(self) -> None:
        shard, info = self._shard, self._info
        if shard is None or info is None:
            return
        self._shard = None
        self._engine("close", shard.close)  # flushes; closed and reopened within our turn: nobody gets in between
        self._shard = self._open_shard(info.vector_dim)

    def yield_to_readers(self) -> int:
        """Let processes waiting for the store in (see :mod:`clipindex.store.turns`), then take it back.

        Costs one listing of an empty folder when nobody waits. Otherwise flushes (everything upserted so far is
        what they see), closes the shard, hands the turn over and reopens the shard once it is ours again.
        Returns how many processes were waiting.
        """
        waiting = self._lend()
        if not waiting:
            return 0
        self._take_back(waiting)
        return len(waiting)

    @property
    def is_open(self) -> bool:
        """Whether this process has the shard open (and so holds the store's turn)."""
        return self._shard is not None

    def close_if_waited_for(self) -> bool:
        """For a process that keeps the store open between its reads (``clipindex serve``): when other processes
        wait for the store, close the shard (a flush first) and give them the turn; the next read reopens it,
        waiting its turn. Costs one listing of an empty folder when nobody waits. True when it handed over."""
        if self._shard is None:
            return False
        waiting = self.turns.waiting_readers()
        if not waiting:
            return False
        self.close()
        self._let_in = waiting  # the next open waits until they have had their turn (it would win the race)
        return True

    @contextlib.contextmanager
    def lend_to_readers(self) -> Iterator[Lending]:
        """Around work that does not touch the store (a batch's inference): a watcher thread checks for waiting
        processes every 20 ms and, as soon as one waits, flushes, closes the shard and lets them in, while the work
        goes on. On exit the store is taken back (waiting for them) and reopened. The caller must not use the
        store inside the block. ``Lending.processes`` says how many were let in."""
        lending = Lending()
        if self._shard is None or self._info is None:
            yield lending
            return
        stop = threading.Event()
        lent: list[list[Path]] = []
        failed: list[BaseException] = []

        def watch() -> None:
            try:
                while not stop.wait(LEND_POLL_S):
                    waiting = self._lend()
                    if waiting:
                        lent.append(waiting)
                        return
            except BaseException as exc:  # raised in the caller's thread below
                failed.append(exc)

        watcher = threading.Thread(target=watch, name="clipindex-lend", daemon=True)
        watcher.start()
        try:
            yield lending
        finally:
            stop.set()
            watcher.join()
            if failed:
                raise failed[0]
            if lent:
                lending.processes = len(lent[0])
                self._take_back(lent[0])

    def _lend(self) -> list[Path]:
        """When processes wait for the store: flush, close the shard and give them the turn; returns them."""
        shard, info = self._shard, self._info
        if shard is None or info is None:
            return []
        waiting = self.turns.waiting_readers()
        if not waiting:
            return []
        self._shard = None
        # close() flushes (what they see: everything upserted so far); a flush() before it would cost as much again
        self._engine("close", shard.close)
        self.turns.let_in()
        return waiting

    def _take_back(self, waiting: list[Path]) -> None:
        """After :meth:`_lend`: take the turn back once they have had it, and reopen the shard."""
        assert self._info is not None
        try:
            self.turns.take_back(waiting, self.wait_s)
            self._shard = self._open_shard(self._info.vector_dim)
        except BaseException:
            self._info = None
            self.turns.give_back()
            raise

    def optimize(self) -> bool:
        shard = self._need()
        if not self._has_room_to_optimize():
            return False
        changed = self._engine("optimize", shard.optimize)
        if changed:
            # the replaced segments are only deleted by a flush: do it now, not at some later crash
            self._engine("flush", shard.flush)
        return bool(changed)

    def _has_room_to_optimize(self) -> bool:
        """Sealing a segment writes a copy of it through memory maps: skip it (the store works on, its appendable
        segment just grows) rather than risk a SIGBUS when the filesystem is nearly full."""
        free = self._free_bytes()
        needed = self.min_free_bytes + OPTIMIZE_HEADROOM_BYTES
        if free is not None and free < needed:
            log.warning(
                "%s: %.0f MB free, %.0f MB needed to seal segments; skipped",
                self.describe(),
                free / 2**20,
                needed / 2**20,
            )
            return False
        return True

    # --- data ---------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        shard = self._need()
        assert self._info is not None
        if not points:
            return
        self._check_free_space()
        op = qe.UpdateOperation.upsert_points(self._edge_points(points, self._info))
        self._engine("upsert", lambda: shard.update(op))

    def count(self, exact: bool = True) -> int:
        shard = self._need()
        if exact:
            return int(self._engine("count", lambda: shard.count(qe.CountRequest(exact=True))))
        return int(self._engine("info", shard.info).points_count)

    def count_with(self, key: str) -> int:
        shard = self._need()
        flt = qe.Filter(must_not=[qe.FieldCondition(key, is_empty=True)])
        return int(self._engine("count", lambda: shard.count(qe.CountRequest(exact=True, filter=flt))))

    def iter_payloads(
        self, fields: Sequence[str] | None = None, page_size: int = 1000
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        self._need()
        selector: bool | qe.PayloadSelector
        if fields is None:
            selector = qe.PayloadSelector.Exclude(list(INTERNAL_KEYS))
        elif fields:
            selector = qe.PayloadSelector.Include(list(fields))
        else:
            selector = False
        offset: Any = None
        since_release = 0
        while True:
            request = qe.ScrollRequest(offset=offset, limit=page_size, with_payload=selector, with_vector=False)
            # the shard is looked up per page: a caller may hand it over to readers between two pages
            records, offset = self._engine("scroll", partial(self._need().scroll, request))
            for rec in records:
                yield str(rec.id), dict(rec.payload or {})
            if offset is None:
                return
            since_release += len(records)
            if since_release >= RELEASE_EVERY_POINTS:  # the pages read so far stay mapped until the shard closes
                since_release = 0
                self.release_memory()

    def scroll_vectors(
        self, fields: Sequence[str], offset: str | None = None, page_size: int = 1000
    ) -> tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32], str | None]:
        self._need()
        selector: bool | qe.PayloadSelector = qe.PayloadSelector.Include(list(fields)) if fields else False
        start: Any = None if offset is None else check_id(offset)
        request = qe.ScrollRequest(offset=start, limit=page_size, with_payload=selector, with_vector=True)
        records, after = self._engine("scroll", partial(self._need().scroll, request))
        ids, payloads, vectors = vector_page(records)
        return ids, payloads, vectors, None if after is None else str(after)

    def _retrieve(
        self, ids: Iterable[str], *, with_payload: bool | qe.PayloadSelector, with_vector: bool
    ) -> Iterator[Any]:
        """The records of the points that exist among ``ids``, read a chunk at a time."""
        self._need()
        wanted = [check_id(i) for i in ids]
        for start in range(0, len(wanted), _RETRIEVE_CHUNK):
            chunk: list[Any] = wanted[start : start + _RETRIEVE_CHUNK]
            retrieve = partial(self._need().retrieve, chunk, with_payload=with_payload, with_vector=with_vector)
            yield from self._engine("retrieve", retrieve)

    def get_vectors(self, ids: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
        return vectors_by_id(self._retrieve(ids, with_payload=False, with_vector=True))

    def get_payloads(self, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        selector = qe.PayloadSelector.Include(list(fields))
        return {
            str(rec.id): dict(rec.payload or {})
            for rec in self._retrieve(ids, with_payload=selector, with_vector=False)
        }

    def delete(self, ids: Iterable[str]) -> None:
        shard = self._need()
        wanted: list[Any] = [check_id(i) for i in ids]
        if wanted:
            self._check_free_space()  # a delete is a WAL write too
            op = qe.UpdateOperation.delete_points(wanted)
            self._engine("delete", lambda: shard.update(op))

    def search(
        self,
        vector: npt.ArrayLike,
        limit: int = DEFAULT_LIMIT,
        score_threshold: float | None = None,
        path_prefix: str | None = None,
        filters: SearchFilter | None = None,
    ) -> list[Hit]:
        shard = self._need()
        assert self._info is not None
        query = as_vector(vector, self._info.vector_dim)
        if limit <= 0:
            return []
        flt: qe.Filter | None = None
        should: list[ConditionType] | None = None
        must: list[ConditionType] = []
        if path_prefix is not None:
            p = normalize_prefix(path_prefix)
            should = [
                qe.FieldCondition(DIRS_KEY, match=qe.MatchValue(p)),
                qe.FieldCondition(PATH_KEY, match=qe.MatchValue(p)),
            ]
        if filters is not None:
            if filters.after is not None or filters.before is not None:
                must.append(qe.FieldCondition(TAKEN_TS_KEY, range=qe.RangeFloat(gte=filters.after, lt=filters.before)))
            if filters.camera is not None:
                must.append(qe.FieldCondition(CAMERA_KEY, match=qe.MatchValue(filters.camera)))
        if should is not None or must:
            flt = qe.Filter(should=should, must=must or None)
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(query.tolist()),
            filter=flt,
            score_threshold=score_threshold,
            with_payload=qe.PayloadSelector.Exclude(list(INTERNAL_KEYS)),
            with_vector=False,
            params=search_params(self.exact_search),
        )
        scored = self._engine("search", lambda: shard.query(request))
        return [Hit(id=str(s.id), score=float(s.score), payload=dict(s.payload or {})) for s in scored]

    def segment_layout(self) -> tuple[int, int]:
        """(sealed segments, of which hold the int8 copy search scans): a store written before clipindex kept the
        copy has sealed segments without it until :meth:`optimize` rewrites them (module doc: Search)."""
        sealed = quantized = 0
        for meta in (self.shard_dir / "segments").glob("*/segment.json"):
            if not (meta.parent / "vector_storage" / "matrix.dat").exists():
                continue  # appendable: chunked vector storage, never quantized
            sealed += 1
            config = _read_json(meta) or {}
            vectors = config.get("config", {}).get("vector_data", {}).get("", {})
            if vectors.get("quantization_config") and (meta.parent / "vector_storage" / "quantized.data").exists():
                quantized += 1
        return sealed, quantized

    # --- integrity (clipindex check) -----------------------------------------------------------

    def read_points(self, ids: Sequence[str]) -> tuple[list[Point], dict[str, str]]:
        """The points among ``ids`` whose payload and vector both read back (payload without ``dirs``), and, for
        the others, id -> why not. A chunk that fails is read again one point at a time, so one damaged point
        costs only itself."""
        self._need()
        selector = qe.PayloadSelector.Exclude(list(INTERNAL_KEYS))
        wanted = [check_id(i) for i in ids]
        points: list[Point] = []
        bad: dict[str, str] = {}

        def read(chunk: list[Any]) -> Any:
            return self._need().retrieve(chunk, with_payload=selector, with_vector=True)

        def take(records: Iterable[Any], asked: Sequence[str]) -> None:
            got: set[str] = set()
            for rec in records:
                vectors = vectors_by_id([rec])
                pid = str(rec.id)
                got.add(pid)
                if pid not in vectors:
                    bad[pid] = "no vector"
                    continue
                points.append(Point(pid, vectors[pid], dict(rec.payload or {})))
            for pid in asked:
                if pid not in got:
                    bad.setdefault(pid, "listed, but cannot be retrieved")

        for start in range(0, len(wanted), _RETRIEVE_CHUNK):
            chunk: list[Any] = wanted[start : start + _RETRIEVE_CHUNK]
            try:
                take(self._engine("retrieve", partial(read, chunk)), chunk)
            except StoreDamagedError:
                for pid in chunk:
                    try:
                        take(self._engine("retrieve", partial(read, [pid])), [pid])
                    except StoreDamagedError as exc:
                        bad[pid] = str(exc.__cause__ or exc)
        return points, bad

    def rebuild_shard(self, batches: Iterable[Sequence[Point]]) -> RebuiltShard:
        """Copy ``batches`` (points read from this store) into a fresh shard, then put it in place of the current
        one, which is kept aside as ``shard.damaged-<time>``; the store is open on the new shard afterwards.

        The current shard is never touched before the new one is complete: it is built in ``shard.rebuild``,
        flushed, counted and closed, then renamed to ``shard.ready`` (complete). Only then is the current shard
        renamed away and the new one renamed to ``shard``. Killed before those renames, the current shard is as
        it was (the next rebuild removes the partial one); killed between them, the next open finishes the swap.
        Works on a store whose shard cannot be opened at all (``batches`` empty: a fresh, empty shard).
        """
        info = self._info or self._read_meta()
        if info is None:
            raise StoreError(f"{self.root / META_FILE} is missing: the dimension of a new shard is not known")
        self._check_free_space()
        self.turns.take(self.wait_s)
        rebuild, ready = self.root / REBUILD_DIR, self.root / READY_DIR
        for leftover in (rebuild, ready):
            if leftover.exists():  # a repair killed before its swap: the current shard is still in place
                shutil.rmtree(leftover)
        config = edge_config(info.vector_dim)
        fresh = self._engine("create the shard", lambda: qe.EdgeShard.create(str(rebuild), config))
        kept = 0
        try:
            self._ensure_indexes(fresh)
            for batch in batches:
                if not batch:
                    continue
                self._check_free_space()
                op = qe.UpdateOperation.upsert_points(self._edge_points(batch, info))
                self._engine("upsert", partial(fresh.update, op))
                kept += len(batch)
            self._engine("optimize", fresh.optimize)
            self._engine("flush", fresh.flush)
            counted = int(self._engine("count", lambda: fresh.count(qe.CountRequest(exact=True))))
            if counted != kept:
                raise StoreError(f"{rebuild}: holds {counted} points after copying {kept}; the store is unchanged")
        finally:
            with contextlib.suppress(Exception):
                fresh.close()
        _fsync_tree(rebuild)
        os.replace(rebuild, ready)
        _fsync_dir(self.root)
        shard, self._shard = self._shard, None
        if shard is not None:
            self._close_shard(shard, keep_turn=True)
        damaged = self._finish_swap()
        self._shard = self._open_shard(info.vector_dim)
        self._info = CollectionInfo(model_name=info.model_name, vector_dim=info.vector_dim)
        return RebuiltShard(points=kept, kept_aside=damaged)

    def _finish_swap(self, aside_prefix: str = DAMAGED_PREFIX) -> Path | None:
        """Put a complete new shard (``shard.ready``) in place, and the files that go with it (``NAME.ready``:
        :data:`SWAPPED_FILES`); the shard it replaces is renamed aside (its new path is returned). Called with the
        turn held, before the shard is opened; finishes a swap killed half-way."""
        ready = self.root / READY_DIR
        aside = None
        adopting = (self.root / f"{SWAPPED_FILES[0]}.ready").exists()  # a switch of models: the old shard goes
        if adopting:
            aside_prefix = REPLACED_PREFIX
        if (ready / "edge_config.json").is_file():
            if self.shard_dir.exists():
                aside = self.root / f"{aside_prefix}{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
                os.replace(self.shard_dir, aside)
            os.replace(ready, self.shard_dir)
            log.info("%s: the new shard is in place (the old one is at %s)", self.describe(), aside)
        moved = False
        for name in SWAPPED_FILES:  # after the shard: a file is never newer than the shard it describes
            waiting = self.root / f"{name}.ready"
            if waiting.exists():
                os.replace(waiting, self.root / name)
                moved = True
        if aside is not None or moved:
            _fsync_dir(self.root)
        if adopting and aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
            return None
        return aside

    def adopt(self, other: EdgeStore) -> int:
        """Make this collection what ``other`` (a closed collection beside it, e.g. a re-embedding) holds: its
        shard, its model (``collection.json``), its last summary and its remembered failures, switched at once
        for every process, which takes turns on this collection meanwhile. Returns the points it holds.

        ``other``'s files are first put beside this collection as ``shard.ready`` and ``NAME.ready`` (the new
        shard is complete before anything of this one changes), then renamed into place; a process killed
        between two renames leaves the rest to the next open (:meth:`_finish_swap`). The replaced shard is deleted
        once the switch is done, and ``other``'s folder with it."""
        if self._shard is not None or other._shard is not None:
            raise StoreError(f"{self.describe()}: close both collections before switching one for the other")
        if not other._shard_exists() or other._read_meta() is None:
            raise other._not_found()
        self._check_free_space()
        self.turns.take(self.wait_s)
        other.turns.take(other.wait_s)
        try:
            for name in SWAPPED_FILES:
                source = other.root / name
                if source.exists():
                    tmp = self.root / f".{name}.adopt.tmp"
                    shutil.copyfile(source, tmp)
                    os.replace(tmp, self.root / f"{name}.ready")
            _fsync_tree(other.shard_dir)
            os.replace(other.shard_dir, self.root / READY_DIR)
            _fsync_dir(self.root)
            self._finish_swap(REPLACED_PREFIX)  # deletes the replaced shard
        finally:
            other.turns.give_back()
            self.turns.give_back()
        shutil.rmtree(other.root, ignore_errors=True)
        info = self.collection_info()
        points = self.count(exact=True)
        self.close()
        log.info("%s now holds %d points of %s", self.describe(), points, info.model_name)
        return points

    def _edge_points(self, points: Sequence[Point], info: CollectionInfo) -> list[qe.Point]:
        dim, model = info.vector_dim, info.model_name
        return [
            qe.Point(check_id(p.id), as_vector(p.vector, dim).tolist(), stored_payload(p.payload, model))
            for p in points
        ]

    # --- status -------------------------------------------------------------------------------

    def save_summary(self, summary: Mapping[str, Any]) -> None:
        try:
            _atomic_write_json(self.root / SUMMARY_FILE, summary)
        except OSError as e:
            raise StoreError(f"cannot write {self.root / SUMMARY_FILE}: {e.strerror or e}") from e

    def load_summary(self) -> dict[str, Any] | None:
        return _read_json(self.root / SUMMARY_FILE)

    # --- internals ----------------------------------------------------------------------------

    def _free_bytes(self) -> int | None:
        """Free space on the shard's filesystem (its nearest existing folder); None when it cannot be read."""
        where = self.shard_dir
        while not where.exists() and where != where.parent:
            where = where.parent
        try:
            st = os.statvfs(where)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _check_free_space(self) -> None:
        """Raise StoreError, before the engine writes, when the filesystem is (nearly) full."""
        free = self._free_bytes()
        if free is not None and free < self.min_free_bytes:
            raise StoreError(
                f"no space left for {self.describe()}: {free / 2**20:.1f} MB free on its filesystem, "
                f"{self.min_free_bytes / 2**20:.0f} MB needed to write safely (CLIPINDEX_MIN_FREE_MB); "
                "free some space, then re-run: finished batches are kept"
            )

    def _check_open_space(self) -> None:
        """Raise StoreError, before the engine maps anything, when opening the shard could kill the process with
        SIGBUS (:data:`OPEN_MIN_FREE_BYTES`)."""
        free = self._free_bytes()
        if free is not None and free < OPEN_MIN_FREE_BYTES:
            raise StoreError(
                f"no space left for {self.describe()}: {free / 2**20:.1f} MB free on its filesystem, "
                f"{OPEN_MIN_FREE_BYTES / 2**20:.0f} MB needed to open it safely (the engine writes through memory "
                "maps); free some space, then re-run: nothing was changed"
            )

    def _need(self) -> qe.EdgeShard:
        require_open(self._shard is not None, self)
        assert self._shard is not None
        return self._shard

    def _shard_exists(self) -> bool:
        # a rebuilt shard waiting to be put in place (a repair killed mid-swap) is the shard
        return any((self.root / name / "edge_config.json").is_file() for name in (SHARD_DIR, READY_DIR))

    def _not_found(self) -> CollectionNotFoundError:
        return CollectionNotFoundError(
            f"no collection {self.collection!r} in {self.data_dir} yet (nothing was ingested there); "
            f"run an ingest first or check --data-dir/--collection"
        )

    def _check(self, found: CollectionInfo, vector_dim: int, model_name: str) -> None:
        if found.vector_dim != vector_dim or found.model_name != model_name:
            where = f"collection {self.collection!r} in {self.data_dir}"
            raise CollectionMismatchError(
                mismatch_message(where, found, model_name, vector_dim)
                + "; or switch it to this model: clipindex ingest DIR --model-dir THIS_MODEL --reembed"
            )

    def _read_meta(self) -> CollectionInfo | None:
        path = self.root / META_FILE
        data = _read_json(path)
        if data is None:
            return None
        try:
            return CollectionInfo(model_name=str(data["model"]), vector_dim=int(data["vector_dim"]))
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{path} lacks a valid 'model'/'vector_dim'; fix or delete it") from e

    def model_record(self) -> dict[str, Any] | None:
        try:
            data = _read_json(self.root / META_FILE)
        except StoreError:
            return None
        record = (data or {}).get("model_record")
        return dict(record) if isinstance(record, dict) else None

    def _write_meta(self, info: CollectionInfo, record: Mapping[str, Any] | None = None) -> None:
        from clipindex.version import __version__

        meta: dict[str, Any] = {
            "format": META_FORMAT,
            "model": info.model_name,
            "vector_dim": info.vector_dim,
            "distance": "cosine",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "clipindex_version": __version__,
        }
        if record:
            meta["model_record"] = dict(record)
        try:
            _atomic_write_json(self.root / META_FILE, meta)
        except OSError as e:
            raise StoreError(f"cannot write {self.root / META_FILE}: {e.strerror or e}") from e

    def _derive_info(self, shard: qe.EdgeShard, fallback_model: str | None) -> CollectionInfo:
        """Model and dimension of a shard whose ``collection.json`` is missing."""
        config = _read_json(self.shard_dir / "edge_config.json") or {}
        try:
            dim = int(config["vectors"][""]["size"])
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{self.shard_dir} has no single unnamed vector: it was not made by clipindex") from e
        records, _ = self._engine(
            "scroll",
            lambda: shard.scroll(qe.ScrollRequest(limit=1, with_payload=qe.PayloadSelector.Include([MODEL_KEY]))),
        )
        model = None
        if records and records[0].payload:
            model = records[0].payload.get(MODEL_KEY)
        if not isinstance(model, str) or not model:
            model = fallback_model or UNKNOWN_MODEL
        return CollectionInfo(model_name=model, vector_dim=dim)

    def _open_shard(self, vector_dim: int | None = None) -> qe.EdgeShard:
        """Take the store's turn (waiting up to ``wait_s``), then open the shard; on failure the turn is given
        back."""
        self._check_open_space()
        took = not self.turns.held
        let_in, self._let_in = self._let_in, []
        if let_in and took:
            self.turns.take_back(let_in, self.wait_s)
        else:
            self.turns.take(self.wait_s)
        try:
            self._finish_swap()
            cleanup_orphan_temp_segments(self.shard_dir)
            # With the dimension known, (re)apply our configuration: a store created by an older clipindex then
            # seals segments the same way (no HNSW graph, bounded segments) from now on.
            config = edge_config(vector_dim) if vector_dim else None
            if self.prefetch:
                prefetch_shard(self.shard_dir, limit_bytes=_prefetch_limit())
            deadline = time.monotonic() + OPEN_RETRY_S
            while True:
                try:
                    return self._engine("open", lambda: qe.EdgeShard.load(str(self.shard_dir), config))
                except StoreBusyError:
                    # The turn is ours, yet the engine's lock is held: a process that just closed the shard (it
                    # lets go a moment later), or one that does not take turns (an older clipindex).
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
        except BaseException:
            if took:
                self.turns.give_back()
            raise

    def _ensure_indexes(self, shard: qe.EdgeShard) -> None:
        present = set(self._engine("info", shard.info).payload_schema)
        for key in INDEXED_KEYS:
            if key not in present:
                # on_disk: sealed segments keep the index memory-mapped (an appendable one keeps it in RAM)
                op = qe.UpdateOperation.create_field_index(key, qe.KeywordIndexParams(on_disk=True))
                self._engine("create a payload index", partial(shard.update, op))
        for key in FLOAT_INDEXED_KEYS:
            if key not in present:
                op = qe.UpdateOperation.create_field_index(key, qe.FloatIndexParams(on_disk=True))
                self._engine("create a payload index", partial(shard.update, op))

    def _close_shard(self, shard: qe.EdgeShard, *, keep_turn: bool = False) -> None:
        try:
            shard.close()
        except Exception as e:
            log.warning("closing %s failed: %s", self.shard_dir, e)
        if not keep_turn:
            self.turns.give_back()

    def _engine(self, what: str, fn: Callable[[], T]) -> T:
        """Run an engine call; its bare ``Exception`` becomes a StoreError naming the shard, or a
        :class:`~clipindex.errors.StoreDamagedError` naming the repair when the message says the files are
        unreadable."""
        try:
            return fn()
        except Exception as e:
            msg = str(e)
            if "WouldBlock" in msg:
                raise StoreBusyError(
                    f"{self.root} is open in a process that does not take turns (an older clipindex?); "
                    "try again when it has finished"
                ) from None
            if is_damage(msg):
                raise StoreDamagedError(self.damage_message(f"{what} failed: {msg}")) from e
            raise StoreError(f"Qdrant Edge: {what} failed on {self.shard_dir}: {msg}") from e

    def check_command(self, repair: bool = True) -> str:
        """The ``clipindex check [--repair]`` command for this store (its folder and collection when not the
        defaults)."""
        import shlex

        from clipindex.settings import default_data_dir

        parts = ["clipindex check --repair" if repair else "clipindex check"]
        if os.path.abspath(self.data_dir) != os.path.abspath(default_data_dir()):
            parts.append(f"--data-dir {shlex.quote(str(self.data_dir))}")
        if self.collection != DEFAULT_COLLECTION:
            parts.append(f"--collection {shlex.quote(self.collection)}")
        return " ".join(parts)

    def damage_message(self, detail: str) -> str:
        """One line: the store is damaged, what the engine said, and the way out."""
        return (
            f"{self.describe()} is damaged (Qdrant Edge: {detail}); run `{self.check_command()}`, then re-run "
            "ingest: it re-embeds the images whose points the repair could not keep"
        )


#: words in an engine error that mean its files are there but unreadable (truncated, zeroed, lost)
DAMAGE_WORDS = (
    "not readable",
    "out of bounds",
    "failed to decode",
    "decompress",
    "deserialize",
    "corrupt",
    "checksum",
    "unexpected end",
    "eof",
    "no such file",
)


def is_damage(message: str) -> bool:
    """Whether an engine error message says the store's files are damaged (:data:`DAMAGE_WORDS`)."""
    lowered = message.lower()
    return any(word in lowered for word in DAMAGE_WORDS)
