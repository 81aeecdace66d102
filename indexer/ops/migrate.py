"""``clipindex migrate``: copy a collection to a Qdrant server as it is, without re-embedding anything.

The usual move is from the embedded store (Qdrant Edge, ``--data-dir``) to a server or a cluster
(``--to http://qdrant:6333``) once a collection outgrows one machine's disk or needs to be shared, but
:func:`migrate` takes any two :class:`~clipindex.store.base.VectorStore`.

What is copied, and how it is checked:

1. The source collection's model name and dimension (:meth:`VectorStore.collection_info`). The target is
   created with them (``ensure_collection``: cosine distance, the model in its metadata, ``--shards`` and
   ``--replicas`` on a server), or, when it exists, must have been built by the same model: a target made by
   another model is refused (``CollectionMismatchError``) before anything is written.
2. Every point, in pages of ``batch_size``: the same id, the same vector (float32, unit norm) and the same
   payload (``path``, ``size``, ``mtime_ns``, ``sha256``...; the internal ``dirs`` key is recomputed by the
   target store). Upserts by id are idempotent, so an interrupted migration is resumed by running it again.
3. Verification: the target's exact count must equal the ids it held before plus the source's ids (so a target
   that already held some of them is fine), and a deterministic sample of vectors is read back from the target
   and compared with the source (max abs difference <= 1e-6). A difference raises ``CountMismatchError``.
4. The source's last ingest summary is saved with the target (``clipindex status`` keeps working).

The target's ingest lock is held while copying (a local ingest into the target is refused meanwhile), and an
embedded source is open in this process only (the engine's own lock refuses a concurrent ingest there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clipindex.errors import CountMismatchError, StoreError
from clipindex.lock import IngestLock
from clipindex.progress import Progress
from clipindex.settings import DEFAULT_MIGRATE_BATCH_SIZE
from clipindex.store.base import Point, VectorStore

__all__ = ["DEFAULT_BATCH_SIZE", "MigrateReport", "migrate"]

DEFAULT_BATCH_SIZE = DEFAULT_MIGRATE_BATCH_SIZE
#: vectors read back from the target and compared with the source
VERIFY_SAMPLE = 256
VECTOR_TOLERANCE = 1e-6


@dataclass
class MigrateReport:
    """What :func:`migrate` did; ``as_json()`` is what ``clipindex migrate --json`` prints."""

    source: str
    target: str
    model: str
    vector_dim: int
    #: exact count of the source collection
    source_points: int
    #: points read from the source and upserted into the target
    copied: int
    #: exact counts of the target collection before and after
    target_before: int
    target_after: int
    #: the target collection was created by this migration
    created: bool
    #: vectors read back from the target and compared with the source
    verified_vectors: int
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data

    def summary_line(self) -> str:
        return (
            f"copied {self.copied} of {self.source_points} points ({self.model}, {self.vector_dim}-d) from "
            f"{self.source} to {self.target}{' (created)' if self.created else ''}; the target holds "
            f"{self.target_after} points ({self.target_before} before); counts and {self.verified_vectors} "
            f"vectors verified; {self.seconds:.1f} s"
        )


def migrate(
    source: VectorStore,
    target: VectorStore,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
    lock: bool = True,
    on_created: Callable[[str], None] | None = None,
) -> MigrateReport:
    """Copy every point of ``source`` into ``target`` (ids, vectors, payloads), then verify; see the module doc.

    ``source`` must hold a collection (``CollectionNotFoundError`` otherwise). Raises ``CollectionMismatchError``
    when ``target`` was built by another model, ``CountMismatchError`` when verification fails, ``LockHeldError``
    when an ingest into ``target`` runs, and ``StoreError`` (``StoreUnavailableError``: exit 69) for the stores.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    started = time.monotonic()
    info = source.collection_info()
    total = source.count(exact=True)
    guard = IngestLock(target.lock_path, target.describe()) if lock else None
    if guard is not None:
        guard.acquire()
    try:
        target_info = target.ensure_collection(info.vector_dim, info.model_name)
        before = {pid for pid, _ in target.iter_payloads([])}
        target_before = target.count(exact=True)
        # (a store object opened earlier keeps answering created=True: an empty collection is the tell)
        created = target_info.created and target_before == 0
        if created and on_created is not None:
            on_created(target.describe())
        if progress is not None:
            progress.start(total)
        copied = 0
        source_ids: set[str] = set()
        sample: dict[str, np.ndarray] = {}
        every = max(1, total // VERIFY_SAMPLE)
        page: list[tuple[str, dict[str, Any]]] = []

        def copy_page() -> None:
            nonlocal copied
            vectors = source.get_vectors([pid for pid, _ in page])
            points = [Point(pid, vectors[pid], payload) for pid, payload in page if pid in vectors]
            target.upsert(points)
            for point in points:
                if len(source_ids) % every == 0 and len(sample) < VERIFY_SAMPLE:
                    sample[point.id] = point.vector
                source_ids.add(point.id)
            copied += len(points)
            if progress is not None:
                progress.advance(len(page))
            page.clear()
            source.yield_to_readers()  # an embedded source: searches waiting for it get in between two pages

        try:
            for pid, payload in source.iter_payloads(None, page_size=batch_size):
                page.append((pid, payload))
                if len(page) >= batch_size:
                    copy_page()
            if page:
                copy_page()
        finally:
            if progress is not None:
                progress.close()
        target.flush()

        after = target.count(exact=True)
        expected = len(before | source_ids)
        if copied != total or after != expected:
            raise CountMismatchError(
                f"{target.describe()}: after copying {copied} of {total} points from {source.describe()} the "
                f"target holds {after} points, expected {expected}; run the migration again (it is idempotent)"
            )
        read_back = target.get_vectors(list(sample))
        bad = [
            pid
            for pid, vector in sample.items()
            if pid not in read_back or float(np.abs(read_back[pid] - vector).max()) > VECTOR_TOLERANCE
        ]
        if bad:
            raise CountMismatchError(
                f"{target.describe()}: {len(bad)} of {len(sample)} sampled vectors differ from {source.describe()} "
                f"after the copy (e.g. point {bad[0]}); run the migration again"
            )
        try:
            summary = source.load_summary()
        except StoreError:  # an unreadable report of the last ingest is not worth failing a verified copy
            summary = None
        if summary is not None:
            target.save_summary(summary)
    finally:
        if guard is not None:
            guard.release()
    return MigrateReport(
        source=source.describe(),
        target=target.describe(),
        model=info.model_name,
        vector_dim=info.vector_dim,
        source_points=total,
        copied=copied,
        target_before=target_before,
        target_after=after,
        created=created,
        verified_vectors=len(sample),
        seconds=time.monotonic() - started,
    )
