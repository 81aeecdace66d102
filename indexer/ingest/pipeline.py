"""``ingest``: walk a folder, embed new and changed images in batches, upsert them, verify every batch.

Phases of one run (the CLI's ``clipindex ingest`` is a thin wrapper around :func:`ingest`):

1. **Lock** the store (:class:`clipindex.lock.IngestLock`): a second concurrent ingest fails at once.
2. **Open** the collection: created with the model's ``embedding_dim`` and cosine distance on first use; a
   collection built by another model stops the run before anything is written.
3. **Index**: read ``size, mtime_ns, sha256`` of every stored point (payloads only, no vectors).
4. **Walk** the folder (:mod:`clipindex.ingest.walk`). A file whose point exists with the same size and mtime is
   *unchanged* and costs nothing but its ``stat`` (unless its payload lacks the date and camera fields: then its
   header is read and its point rewritten with the stored vector, never re-embedded). ``--shard K/N`` keeps the
   paths hashing to shard K. The walk
   streams: the files it finds to embed feed the next phase as it goes, so the first batch is embedded long
   before a large tree is fully walked (``Progress.start`` gets the total when the walk ends).
5. **Embed** the rest in batches of ``batch_size``, decoding one batch ahead on a thread pool; then each batch's
   named steps (:meth:`_Ingest.write_batch`): sort the items, reuse stored vectors (same sha256: renames,
   duplicates), encode the rest, build the points,
6. **upsert and verify**: the collection's point count must equal the count expected from the ids written and
   deleted so far. A mismatch retries the batch once, then raises ``CountMismatchError``.
7. **Prune** (``prune=True``), once the walk has ended: delete the points under the folder whose files are
   gone, except under folders the walk could not list, and those of files that now fail to decode.
8. **Finish**: exact count, flush, and the run's summary saved with the collection (``clipindex status``).

Upserts are idempotent (ids derive from paths) and acknowledged writes are durable, so a run killed at any
point leaves a store from which the next run converges to the exact index.
"""

from __future__ import annotations

import contextlib
import os
import random
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipindex import cstderr
from clipindex.errors import CountMismatchError, ImageError, StoreDamagedError, StoreError, StoreUnavailableError
from clipindex.images.decode import DecodedFile, decode_file
from clipindex.images.prefetch import decode_ahead
from clipindex.images.raw import MISSING_EXTRA, raw_available
from clipindex.ingest.failures import FailureMemory, Remembered, new_entry
from clipindex.ingest.live import LiveProgress, progress_path
from clipindex.ingest.points import (
    DATED_KEY,
    ENGINE_FIELDS,
    INDEX_FIELDS,
    UNRECORDED_ENGINE,
    absolute,
    absolute_point_id,
    display_path,
    in_shard,
    make_payload,
    path_bytes,
)
from clipindex.ingest.walk import iter_image_entries
from clipindex.lock import IngestLock
from clipindex.model.encode import Embedder, available_cores
from clipindex.model.locate import model_record
from clipindex.progress import Progress
from clipindex.settings import DEFAULT_BATCH_SIZE
from clipindex.store.base import PATH_KEY, Point, VectorStore

#: how often (seconds) the embedded store is flushed during a run; it is flushed at the end too
FLUSH_INTERVAL_S = 30.0
PRUNE_CHUNK = 1000
#: with images to embed and at least this many points read, ingest asks the store to give back what the read
#: left mapped (the embedded store: 0.5 GB at 1M points, 50 MB at 100k) before the model loads
RELEASE_MEMORY_POINTS = 100_000
#: payloads per page when reading the index of stored points (fewer, larger pages: ~13 % faster at 1M points)
INDEX_PAGE_SIZE = 5000
#: the walk runs ahead of the batches while it has used less than this share of the main thread's time since the
#: first batch was asked for (it ends early in the run, and its total is known; the first batch does not wait for it)
WALK_SHARE = 0.5
#: outside the batch loop (index read, walk, prune), the store checks for waiting readers this often (seconds)
YIELD_CHECK_S = 0.2
#: stored vectors the end-of-run probe reads back (:meth:`_Ingest.probe`)
PROBE_SAMPLE = 32


@dataclass(frozen=True)
class FailedFile:
    path: str
    reason: str
    #: failed before with the same size and mtime: not decoded again (:mod:`clipindex.ingest.failures`)
    known: bool = False
    #: the path's bytes in base64 when they are not valid UTF-8 (:func:`~clipindex.ingest.points.path_bytes`)
    path_bytes: str | None = None


@dataclass
class IngestReport:
    """What one run did. ``as_json()`` is what ``clipindex ingest --json`` prints."""

    indexed: int = 0
    unchanged: int = 0
    reused: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    removed: int = 0
    points: int = 0
    seconds: float = 0.0
    #: times the run let processes waiting for the embedded store (searches) in between two batches
    handoffs: int = 0
    #: the exact count when the run started (not in :meth:`as_json`)
    points_before: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["points_before"]
        data["seconds"] = round(self.seconds, 3)
        for failed in data["failed"]:
            if failed["path_bytes"] is None:
                del failed["path_bytes"]
        return data

    @property
    def known_failed(self) -> int:
        return sum(1 for f in self.failed if f.known)

    def summary_line(self) -> str:
        known = self.known_failed
        failed = f"{len(self.failed)} ({known} known)" if known else f"{len(self.failed)}"
        return (
            f"indexed {self.indexed} (reused {self.reused}), unchanged {self.unchanged}, failed {failed}, "
            f"removed {self.removed}; {self.points} points in the collection; {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class IngestOptions:
    batch_size: int = DEFAULT_BATCH_SIZE
    prune: bool = False
    #: ``(K, N)``: only files whose path hashes to shard K of N (1-based)
    shard: tuple[int, int] | None = None
    #: decode/preprocess threads; default: the cores
    decode_workers: int | None = None
    flush_interval_s: float = FLUSH_INTERVAL_S
    #: remember the files that fail, and skip them while they do not change (:mod:`clipindex.ingest.failures`)
    remember_failures: bool = True
    #: decode the remembered failures again
    retry_failed: bool = False
    #: store the EXIF GPS position (``gps: {lat, lon}``) of the files this run writes; off by default (privacy)
    store_gps: bool = False


@dataclass(frozen=True, slots=True)
class _Stored:
    """What a run keeps in memory per stored point (docs/design.md has its size at 1M points).
    No path (``--prune`` reads the paths of the points the walk did not see from the store); the sha256 as its 32
    raw bytes."""

    #: the very object that keys :attr:`_Ingest.stored`, so that ``seen`` holds no second copy of it
    point_id: str
    size: int
    mtime_ns: int
    sha256: bytes
    #: the payload has the date and camera fields (``taken_at_source``); else an unchanged file is read again,
    #: header only, and its point rewritten with its stored vector
    dated: bool = True


@dataclass(frozen=True, slots=True)
class _Pending:
    path: str
    size: int
    mtime_ns: int
    point_id: str


@dataclass
class _Prepared:
    pending: _Pending
    decoded: DecodedFile | None = None
    pixels: np.ndarray | None = None
    reuse_from: str | None = None
    error: str | None = None


@dataclass
class _Batch:
    """One batch, sorted (:meth:`_Ingest.sort_batch`): what to encode, what reuses a stored vector, what copies
    an earlier item of the batch, and the ids of stored points whose files became unreadable."""

    to_encode: list[_Prepared] = field(default_factory=list)
    to_reuse: list[_Prepared] = field(default_factory=list)
    duplicates: list[_Prepared] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


class _Ingest:
    """One run's state; :func:`ingest` is the public entry point."""

    def __init__(
        self,
        root: Path,
        embedder: Embedder,
        store: VectorStore,
        options: IngestOptions,
        on_failed: Callable[[FailedFile], None] | None,
        progress: Progress | None,
    ) -> None:
        self.root = absolute(root)
        self.root_display = display_path(self.root)
        self.embedder = embedder
        self.store = store
        self.options = options
        self.on_failed = on_failed
        self.progress = progress
        self.report = IngestReport()
        #: the engines ("openvino bf16") of the vectors this run wrote, and per content hash of the batch, what
        #: computed its vector (a copied vector keeps its own)
        self.engines: set[str] = set()
        self.origins: dict[str, tuple[str | None, str | None]] = {}
        self.stored: dict[str, _Stored] = {}
        #: raw sha256 -> id of a stored point with that content
        self.hash_to_id: dict[bytes, str] = {}
        self.present: set[str] = set()
        self.expected_count = 0
        self.count_baseline = 0
        self.last_flush = time.monotonic()
        self.walk_blocked: list[str] = []
        #: files the walk found to index (None until the walk is done), and so far: reported when the server goes away
        self.todo_total: int | None = None
        self.todo_found = 0
        self.batches_done = 0
        #: ``--shard``: the other shards may write to the same collection at the same time, so batches are
        #: verified by reading their ids back instead of by the collection's count
        self.shared = options.shard is not None
        #: ``--shard``: ids of every file the walk found, in any shard (never pruned by this shard)
        self.walked: set[str] = set()
        self.seen: set[str] = set()
        #: remembered failures (None: not remembered) and this run's decode failures, to remember
        self.memory: FailureMemory | None = FailureMemory.for_store(store) if options.remember_failures else None
        self.new_failures: list[Remembered] = []
        #: the progress file ``clipindex status`` reads (None when the run takes no lock)
        self.live: LiveProgress | None = None
        self.next_yield_check = 0.0

    def maybe_yield(self, *, now: bool = False) -> None:
        """Let processes waiting for the store in (see :meth:`VectorStore.yield_to_readers`). Between batches
        (``now``) always; elsewhere at most every :data:`YIELD_CHECK_S`."""
        if not now:
            t = time.monotonic()
            if t < self.next_yield_check:
                return
            self.next_yield_check = t + YIELD_CHECK_S
        if self.store.yield_to_readers():
            self.count_handoff()

    def count_handoff(self) -> None:
        self.report.handoffs += 1
        if self.live is not None:
            self.live.handoffs = self.report.handoffs

    def set_phase(self, phase: str, **fields: Any) -> None:
        if self.live is not None:
            self.live.update(phase=phase, **fields)

    # --- phases -----------------------------------------------------------------------------------------

    def load_index(self) -> None:
        for pid, payload in self.store.iter_payloads([*INDEX_FIELDS, DATED_KEY], page_size=INDEX_PAGE_SIZE):
            self.maybe_yield()
            self.present.add(pid)
            try:
                entry = _Stored(
                    point_id=pid,
                    size=int(payload["size"]),
                    mtime_ns=int(payload["mtime_ns"]),
                    sha256=bytes.fromhex(str(payload["sha256"])),
                    dated=DATED_KEY in payload,
                )
            except (KeyError, TypeError, ValueError):
                continue  # a point not written by clipindex ingest: never skipped, never reused
            self.stored[pid] = entry
            self.hash_to_id.setdefault(entry.sha256, pid)
        exact = self.store.count(exact=True)
        self.expected_count = exact
        self.report.points_before = exact
        # The fast count may carry a constant offset (e.g. after a crash); batches check its *change*.
        self.count_baseline = self.store.count(exact=False) - exact

    def walk(self) -> Iterator[_Pending]:
        """The files to embed, yielded as the walk finds them (it feeds the decode pool as it goes); ``self.seen``
        holds every path the walk has reached, and is complete once the generator is exhausted."""
        seen = self.seen
        shard = self.options.shard

        def on_walk_error(path: str, reason: str) -> None:
            # An unlistable folder or a non-regular file: reported like a failed image, and nothing
            # under that path is pruned (its files were not seen, they are not known to be gone).
            self.walk_blocked.append(display_path(absolute(path)).rstrip("/") + "/")
            link = _link_stat(path)
            if link is None or self.memory is None:
                self.fail(path, reason)
                return
            # a dangling or unreadable link: remembered like a failed image, by the link's own size and mtime
            if not self.options.retry_failed:
                known = self.memory.known(path, link.st_size, link.st_mtime_ns)
                if known is not None:
                    self.new_failures.append(known)
                    self.fail(path, known.reason, known=True)
                    return
            self.fail(path, reason, pending=_Pending(path, link.st_size, link.st_mtime_ns, ""))

        # the root is absolute and normalised, so are the paths the walk joins to it
        for path, size, mtime_ns in iter_image_entries(self.root, on_error=on_walk_error):
            self.maybe_yield()
            pid = absolute_point_id(path)
            if shard is not None:
                self.walked.add(pid)
                if not in_shard(path, *shard):
                    continue
            previous = self.stored.get(pid)
            if previous is not None:
                pid = previous.point_id  # the stored key object: ``seen`` keeps no second copy of the id
            seen.add(pid)
            if previous is not None and previous.size == size and previous.mtime_ns == mtime_ns:
                if previous.dated:
                    self.report.unchanged += 1
                    continue
                # stored before dates and cameras were: its header is read, its vector reused (no re-embedding)
                yield _Pending(path, size, mtime_ns, pid)
                continue
            if self.memory is not None and not self.options.retry_failed:
                known = self.memory.known(path, size, mtime_ns)
                if known is not None and not (MISSING_EXTRA in known.reason and raw_available()):
                    # failed before and unchanged since: not decoded again (a RAW file remembered as needing the
                    # ``clipindex[raw]`` extra is tried again once the extra is installed)
                    self.new_failures.append(known)
                    self.fail(path, known.reason, known=True)
                    continue
            yield _Pending(path, size, mtime_ns, pid)

    def stream(self, todo: Iterator[_Pending]) -> Iterator[_Pending]:
        """``todo`` (the walk) passed on as the batches ask for it, with the walk running ahead of them.

        Each request walks until one file to embed is found; once a batch has been written, it walks on while the
        walk has used less than :data:`WALK_SHARE` of the time since the first request. So the first batch goes out
        as soon as the walk has found it, and the walk still ends early in the run (then the total is known:
        progress starts, status shows an ETA) instead of with the last batch. Its first item has the store give
        back the pages its index read mapped, before the model loads."""
        buffer: deque[_Pending] = deque()
        walking = True
        walk_s = 0.0
        started = time.monotonic()
        while True:
            t0 = time.monotonic()
            while walking and (
                not buffer or (self.batches_done and walk_s + time.monotonic() - t0 < WALK_SHARE * (t0 - started))
            ):
                pending = next(todo, None)
                if pending is None:
                    walking = False
                    self.todo_total = self.todo_found
                    if self.progress is not None:
                        self.progress.start(self.todo_found)
                    self.set_phase("embedding", todo=self.todo_found)
                    break
                if self.todo_found == 0:
                    if len(self.present) >= RELEASE_MEMORY_POINTS:
                        self.store.release_memory()
                    self.set_phase("embedding")
                self.todo_found += 1
                buffer.append(pending)
            walk_s += time.monotonic() - t0
            if not buffer:
                return
            yield buffer.popleft()

    def prepare(self, pending: _Pending, *, reuse: bool = True) -> _Prepared:
        """Runs on a decode thread: hash, then decode + preprocess unless the content is already stored."""
        prepared = _Prepared(pending)
        known = self.hash_to_id if reuse else {}
        try:
            with cstderr.decoding():  # what libtiff & co. print meanwhile stays out of the log
                decoded = decode_file(
                    pending.path, self.embedder.preprocessor, decode_pixels=lambda sha: bytes.fromhex(sha) not in known
                )
            prepared.decoded = decoded
            if decoded.image is None:
                prepared.reuse_from = self.hash_to_id.get(bytes.fromhex(decoded.sha256))
            else:
                image, decoded.image = decoded.image, None  # the bitmap is freed once preprocessed
                prepared.pixels = self.embedder.preprocessor.preprocess(image)
        except ImageError as exc:
            # decoded again alone, so that the C libraries' messages name this file's problem in its one line
            prepared.error = cstderr.explain(exc.reason, lambda: decode_file(pending.path, self.embedder.preprocessor))
        except MemoryError:
            prepared.error = (
                "not enough memory to decode this image (lower max_pixels, --max-pixels, to skip such images)"
            )
        return prepared

    def embed(self, todo: Iterable[_Pending]) -> None:
        """Decode ahead on the pool and write batch after batch, while ``todo`` (the walk) is still running."""
        workers = self.options.decode_workers or available_cores()
        for prepared in decode_ahead(todo, self.prepare, batch_size=self.options.batch_size, workers=workers):
            self.write_batch(prepared)

    def write_batch(self, prepared: list[_Prepared]) -> None:
        """One batch, in named steps: sort the items, reuse stored vectors, encode the rest, build the points,
        upsert and verify them (and delete the points of files that became unreadable)."""
        batch = self.sort_batch(prepared)
        vectors: dict[str, np.ndarray] = {}
        self.origins = {}
        self.reuse_stored_vectors(batch, vectors)
        self.encode_batch(batch, vectors)
        points = self.build_points(batch, vectors)
        if points:
            self.upsert_verified(points)
        if batch.stale:
            self.delete(batch.stale)
        if self.progress is not None:
            self.progress.advance(len(prepared))
        if time.monotonic() - self.last_flush >= self.options.flush_interval_s:
            self.maintain()
        if self.live is not None:
            self.live.update(done=self.live.done + len(prepared))
        self.batches_done += 1
        self.maybe_yield(now=True)  # this batch is upserted and verified: waiting searches will see it

    def sort_batch(self, prepared: list[_Prepared]) -> _Batch:
        """Failed items are reported (their stored points become stale); the first item of each content hash is
        encoded, or reuses a stored vector when it was not decoded; later items of the same hash copy it."""
        batch = _Batch()
        first_of_hash: dict[str, _Prepared] = {}
        for item in prepared:
            if item.error is not None:
                self.fail_item(item, item.error, batch)  # a stored file that changed into something unreadable
                continue
            assert item.decoded is not None
            sha = item.decoded.sha256
            if sha in first_of_hash:
                batch.duplicates.append(item)
            elif item.pixels is not None:
                first_of_hash[sha] = item
                batch.to_encode.append(item)
            else:
                first_of_hash[sha] = item
                batch.to_reuse.append(item)
        return batch

    def reuse_stored_vectors(self, batch: _Batch, vectors: dict[str, np.ndarray]) -> None:
        """Copy the stored vector of each item whose content is already stored; an item whose stored point is
        gone meanwhile is decoded after all (and encoded with the others)."""
        if not batch.to_reuse:
            return
        sources = [i.reuse_from for i in batch.to_reuse if i.reuse_from]
        stored = self.store.get_vectors(sources)
        made_by = self.store.get_payloads(sources, ENGINE_FIELDS)  # a copied vector keeps its engine
        reused: list[_Prepared] = []
        failed: dict[str, str] = {}  # content hash -> why its decode failed
        for item in batch.to_reuse:
            assert item.decoded is not None
            vector = stored.get(item.reuse_from or "")
            if vector is None:  # the point we meant to copy is gone: decode after all
                redone = self.prepare(item.pending, reuse=False)
                if redone.error is not None:
                    failed[item.decoded.sha256] = redone.error
                    self.fail_item(item, redone.error, batch)
                    continue
                item.pixels = redone.pixels
                batch.to_encode.append(item)  # encoded with the others; no longer a reuse
            else:
                vectors[item.decoded.sha256] = vector
                origin = made_by.get(item.reuse_from or "", {})
                self.origins[item.decoded.sha256] = (origin.get("engine"), origin.get("precision"))
                self.engines.add(
                    f"{origin['engine']} {origin.get('precision')}" if "engine" in origin else UNRECORDED_ENGINE
                )
                self.report.reused += 1
                reused.append(item)
        batch.to_reuse = reused
        if failed:  # copies of content that turned out unreadable fail with it
            copies: list[_Prepared] = []
            for item in batch.duplicates:
                assert item.decoded is not None
                if item.decoded.sha256 in failed:
                    self.fail_item(item, failed[item.decoded.sha256], batch)
                else:
                    copies.append(item)
            batch.duplicates = copies

    def fail_item(self, item: _Prepared, reason: str, batch: _Batch) -> None:
        """Report a file of this batch that cannot be indexed; its stored point, if any, becomes stale."""
        self.fail(item.pending.path, reason, pending=item.pending)
        if item.pending.point_id in self.present:
            batch.stale.append(item.pending.point_id)

    def encode_batch(self, batch: _Batch, vectors: dict[str, np.ndarray]) -> None:
        """Run the vision tower on the items to encode, letting waiting searches in meanwhile."""
        if not batch.to_encode:
            return
        pixels = np.stack([i.pixels for i in batch.to_encode if i.pixels is not None])
        with self.store.lend_to_readers() as lending:  # searches that come meanwhile get in at once
            encoded = self.embedder.encode_pixels(pixels)
        if lending.processes:
            self.count_handoff()
        engine, _, precision = self.embedder.engine("vision").partition(" ")
        self.engines.add(f"{engine} {precision}")
        for item, vector in zip(batch.to_encode, encoded, strict=True):
            assert item.decoded is not None
            vectors[item.decoded.sha256] = vector
            self.origins[item.decoded.sha256] = (engine, precision)
            item.pixels = None

    def build_points(self, batch: _Batch, vectors: dict[str, np.ndarray]) -> list[Point]:
        """One point per item: its id, its content's vector and its payload (duplicates count as reused)."""
        self.report.reused += len(batch.duplicates)
        points: list[Point] = []
        for item in [*batch.to_encode, *batch.to_reuse, *batch.duplicates]:
            decoded = item.decoded
            assert decoded is not None
            pending = item.pending
            engine, precision = self.origins.get(decoded.sha256, (None, None))
            payload = make_payload(
                path=pending.path,
                size=pending.size,
                mtime_ns=pending.mtime_ns,
                sha256=decoded.sha256,
                width=decoded.width,
                height=decoded.height,
                image_format=decoded.format,
                model=self.embedder.model_name,
                engine=engine,
                precision=precision,
                facts=decoded.facts,
                store_gps=self.options.store_gps,
            )
            points.append(Point(pending.point_id, vectors[decoded.sha256], payload))
        return points

    def maintain(self) -> None:
        """Every flush interval: the store's due maintenance (the embedded store seals its appendable segment into
        a compact memory-mapped one, which keeps memory low at 1M points), then a flush."""
        self.store.optimize()
        self.store.flush()
        self.last_flush = time.monotonic()

    def upsert_verified(self, points: list[Point]) -> None:
        new_ids = {p.id for p in points} - self.present
        expected = self.expected_count + len(new_ids)
        for attempt in (1, 2):
            self.store.upsert(points)
            if self.shared:  # other shards write too: check that this batch's ids are all there
                missing = {p.id for p in points} - set(self.store.get_vectors([p.id for p in points]))
                if not missing:
                    break
                if attempt == 2:
                    raise CountMismatchError(
                        f"{self.store.describe()}: after upserting a batch of {len(points)} points, {len(missing)} "
                        "of them are not in the collection (retried once); stopping so nothing is lost. "
                        "Check the store, then re-run: finished batches are kept"
                    )
                continue
            got = self.store.count(exact=False) - self.count_baseline
            if got == expected:
                break
            if attempt == 2:
                raise CountMismatchError(
                    f"{self.store.describe()}: after upserting a batch of {len(points)} points the collection "
                    f"holds {got} points, expected {expected} (retried once); stopping so nothing is lost. "
                    "Check the store, then re-run: finished batches are kept"
                )
        self.present.update(new_ids)
        self.expected_count = expected
        for point in points:
            self.hash_to_id.setdefault(bytes.fromhex(str(point.payload["sha256"])), point.id)
        self.report.indexed += len(points)

    def delete(self, ids: Sequence[str]) -> None:
        present = [i for i in ids if i in self.present]
        if not present:
            return
        self.store.delete(present)
        self.present.difference_update(present)
        self.expected_count -= len(present)
        for pid in present:
            entry = self.stored.pop(pid, None)
            if entry is not None and self.hash_to_id.get(entry.sha256) == pid:
                del self.hash_to_id[entry.sha256]

    def prune(self, seen: set[str]) -> None:
        under = self.root_display.rstrip("/") + "/"
        blocked = tuple(self.walk_blocked)
        shard = self.options.shard
        # points written by ingest that the walk did not see (nor, with --shard, any shard's walk); their paths
        # come from the store, a chunk at a time (the run keeps no paths in memory)
        unseen = [pid for pid in self.stored if pid not in seen and pid not in self.walked]
        gone: list[str] = []
        for start in range(0, len(unseen), PRUNE_CHUNK):
            self.maybe_yield()
            chunk = unseen[start : start + PRUNE_CHUNK]
            payloads = self.store.get_payloads(chunk, [PATH_KEY])
            for pid in chunk:
                path = payloads.get(pid, {}).get(PATH_KEY)
                if (
                    isinstance(path, str)
                    and path.startswith(under)
                    and not path.startswith(blocked)
                    and (shard is None or in_shard(path, *shard))
                ):
                    gone.append(pid)
        for start in range(0, len(gone), PRUNE_CHUNK):
            chunk = gone[start : start + PRUNE_CHUNK]
            self.delete(chunk)
            self.report.removed += len(chunk)
        if gone and self.shared:
            left = self.store.get_vectors(gone)
            if left:
                raise CountMismatchError(
                    f"{self.store.describe()}: after pruning {len(gone)} points, {len(left)} of them are still in "
                    "the collection; re-run to converge"
                )
        elif gone:
            got = self.store.count(exact=False) - self.count_baseline
            if got != self.expected_count:
                raise CountMismatchError(
                    f"{self.store.describe()}: after pruning {len(gone)} points the collection holds {got}, "
                    f"expected {self.expected_count}; re-run to converge"
                )

    def fail(self, path: str, reason: str, *, known: bool = False, pending: _Pending | None = None) -> None:
        reason = cstderr.short_reason(reason)  # one line, under 200 characters
        failed = FailedFile(display_path(path), reason, known, path_bytes(path))
        self.report.failed.append(failed)
        if (
            pending is not None
        ):  # a file that failed to decode, or a broken link: remembered (other walk errors are not)
            self.new_failures.append(new_entry(pending.path, pending.size, pending.mtime_ns, reason))
        if self.on_failed is not None:
            self.on_failed(failed)

    def remember_failures(self) -> None:
        """Replace the remembered failures under this run's folder (and shard) by this run's: deleted, fixed and
        changed files are forgotten. Folders the walk could not list keep theirs."""
        if self.memory is None:
            return
        under = self.root_display.rstrip("/") + "/"
        blocked = tuple(self.walk_blocked)
        shard = self.options.shard

        def in_scope(path: str) -> bool:
            shown = display_path(path)
            return (
                shown.startswith(under) and not shown.startswith(blocked) and (shard is None or in_shard(path, *shard))
            )

        with contextlib.suppress(OSError):  # only a cache: the files are decoded (and reported) again next time
            self.memory.replace(in_scope, self.new_failures)

    def finish(self) -> None:
        exact = self.store.count(exact=True)
        if self.shared:  # the other shards change the count: check that this shard's points are all there
            stored = {pid for pid, _ in self.store.iter_payloads([])}
            missing = [pid for pid in self.seen & self.present if pid not in stored]
            if missing:
                raise CountMismatchError(
                    f"{self.store.describe()}: {len(missing)} points of this shard are missing from the collection; "
                    "re-run to converge"
                )
            self.report.points = exact
            return
        if exact != self.expected_count:
            raise CountMismatchError(
                f"{self.store.describe()}: the exact count is {exact} points, expected {self.expected_count}; "
                "re-run to converge"
            )
        self.report.points = exact

    def probe(self) -> None:
        """The store can serve what it holds: a sample of the stored vectors reads back, and a search for one of
        them finds it. A store whose vectors or payloads are damaged raises here instead of reporting success."""
        if not self.present:
            return
        rng = random.Random(len(self.present))
        sample = rng.sample(list(self.present), min(PROBE_SAMPLE, len(self.present)))
        vectors = self.store.get_vectors(sample)
        missing = [pid for pid in sample if pid not in vectors]
        if missing and not self.shared:  # (another shard may have pruned some of them meanwhile)
            raise StoreDamagedError(
                self.store.damage_message(f"{len(missing)} of {len(sample)} sampled points do not read back")
            )
        for pid, vector in list(vectors.items())[:1]:
            hits = self.store.search(vector, limit=1)
            if not hits:
                raise StoreDamagedError(self.store.damage_message(f"a search for the vector of {pid} finds nothing"))


def ingest(
    root: str | os.PathLike[str],
    embedder: Embedder,
    store: VectorStore,
    *,
    options: IngestOptions | None = None,
    on_failed: Callable[[FailedFile], None] | None = None,
    progress: Progress | None = None,
    lock: bool = True,
    held: IngestLock | None = None,
) -> IngestReport:
    """Index every image under ``root`` into ``store`` with ``embedder``; see the module doc for the phases.

    Raises ``LockHeldError`` (another ingest runs), ``CollectionMismatchError`` (another model built the
    collection), ``WalkError`` (``root`` is not a readable folder), ``CountMismatchError`` and ``StoreError``.
    Files that fail to decode do not stop the run: they are in ``report.failed`` and given to ``on_failed``.
    ``held``: the run's lock (:func:`ingest_lock`), taken by the caller, who releases it.
    """
    started = time.monotonic()
    run = _Ingest(Path(root), embedder, store, options or IngestOptions(), on_failed, progress)
    with _maybe_lock(store, lock, run.options.shard, held) as taken:
        if taken is not None:
            run.live = LiveProgress(progress_path(taken.path), run.root_display)
            run.set_phase("waiting for the store")
        try:
            store.ensure_collection(embedder.dimension, embedder.model_name, record=model_record(embedder.manifest))
        except BaseException:  # refused (another model built it, ...): not an interrupted run
            if run.live is not None:
                run.live.remove()
            raise
        try:
            run.set_phase("reading the index")
            run.load_index()
            run.set_phase("walking")
            run.embed(run.stream(run.walk()))  # the first batch is embedded while the walk goes on
            if run.options.prune:  # only now has the walk seen every file
                run.set_phase("pruning")
                run.prune(run.seen)
            run.set_phase("finishing")
            store.optimize()  # the final flush is the finally's below
            run.finish()
            run.probe()
            run.remember_failures()
        except StoreUnavailableError as exc:
            if run.todo_total is not None:
                done = f"{run.report.indexed} of {run.todo_total} images indexed"
            elif run.todo_found:  # the walk was still going: its total is not known
                done = f"{run.report.indexed} images indexed (of {run.todo_found} found so far by the walk)"
            else:
                raise
            raise StoreUnavailableError(f"{exc}; {done} before the server went away; re-run to resume") from None
        finally:
            if progress is not None:
                progress.close()
            if run.live is not None:
                run.live.remove()
            run.report.seconds = time.monotonic() - started
            store.flush()
        summary = run.report.as_json()
        summary.update({"root": run.root_display, "model": embedder.model_name, "finished_at": time.time()})
        summary.update(model_record(embedder.manifest))  # search and status find the model from any folder
        summary["engines"] = engines_over_runs(store, run.engines)
        if run.options.shard is not None:  # other shards write too: status does not hold the count against it
            summary["shard"] = f"{run.options.shard[0]}/{run.options.shard[1]}"
        summary["failed"] = len(run.report.failed)
        summary["failed_known"] = run.report.known_failed
        store.save_summary(summary)
    return run.report


def engines_over_runs(store: VectorStore, written: set[str]) -> list[str]:
    """The engines that wrote the collection's vectors, over its runs: the last summary's and ``written``; a
    collection written before its summaries recorded engines counts :data:`UNRECORDED_ENGINE` among them."""
    try:
        previous = store.load_summary()
    except StoreError:
        previous = None
    engines = set(written)
    if previous is not None:
        recorded = previous.get("engines")
        if isinstance(recorded, list):
            engines.update(str(label) for label in recorded)
        elif previous.get("points"):
            engines.add(UNRECORDED_ENGINE)
    return sorted(engines)


def _link_stat(path: str) -> os.stat_result | None:
    """The ``lstat`` of ``path`` when it is a symbolic link, else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISLNK(st.st_mode) else None


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class _Held:
    """A lock the caller took already (and releases)."""

    def __init__(self, lock: IngestLock) -> None:
        self.lock = lock

    def __enter__(self) -> IngestLock:
        return self.lock

    def __exit__(self, *exc: object) -> None:
        return None


def ingest_lock(store: VectorStore, shard: tuple[int, int] | None = None) -> IngestLock:
    """The lock an ingest into ``store`` (its ``--shard``, if any) holds; :func:`ingest` takes it unless given
    ``held``. A caller takes it itself to hold it over work before the run (finding or converting the model)."""
    path = store.lock_path
    if shard is not None:  # the N shards of one tree may run at once (e.g. N cron jobs on one machine)
        path = path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")
    return IngestLock(path, store.describe())


def _maybe_lock(
    store: VectorStore, lock: bool, shard: tuple[int, int] | None = None, held: IngestLock | None = None
) -> IngestLock | _NoLock | _Held:
    if held is not None:
        return _Held(held)
    if not lock:
        return _NoLock()
    return ingest_lock(store, shard)
