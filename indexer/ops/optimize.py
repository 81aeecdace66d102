"""``clipindex optimize``: bring a collection's storage up to date now, rather than at the next ingest.

For the embedded store this is the engine's ``optimize()`` run until it has nothing left to do: it seals the
appendable segment, merges small segments, vacuums deleted points and, for a store written before clipindex
kept an int8 copy of the vectors (issue 16), rewrites every sealed segment with that copy, which is what makes
search at 1M points sub-second (docs/operations.md, "Search at scale"). An ingest does the same at its end, so a
store upgrades itself on its next cron run; this command is for doing it at a time of your choosing, since the
first upgrade of a large store rewrites all of it (its cost: benchmarks/results.md).

Searches keep working on a store that is not upgraded (exact float32 scan of the segments without the int8
copy). The command takes the ingest lock, so it never runs alongside an ingest into the same store.

A Qdrant server optimises by itself; there the command only reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clipindex.lock import IngestLock
from clipindex.store.base import VectorStore

__all__ = ["OptimizeReport", "optimize_collection"]

#: rounds of ``optimize()``: each one runs every due optimisation; the engine converges in one or two
MAX_ROUNDS = 8


@dataclass(frozen=True)
class OptimizeReport:
    """What :func:`optimize_collection` found and did."""

    store: str
    points: int
    rounds: int
    changed: bool
    seconds: float
    segments: int | None = None
    quantized_segments: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "points": self.points,
            "rounds": self.rounds,
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
            "segments": self.segments,
            "quantized_segments": self.quantized_segments,
        }

    def format(self) -> str:
        what = "optimised" if self.changed else "already up to date"
        line = f"{self.store}: {what} in {self.seconds:.1f} s, {self.points:,} points"
        if self.segments is not None:
            line += f", {self.segments} sealed segment(s), {self.quantized_segments} with the int8 copy for search"
        return line


def optimize_collection(
    store: VectorStore, *, lock: bool = True, on_round: Callable[[int, bool], None] | None = None
) -> OptimizeReport:
    """Run the store's optimisation until nothing changes (at most :data:`MAX_ROUNDS` rounds), then flush.

    Opens the existing collection (never creates one: :class:`~clipindex.errors.CollectionNotFoundError`), under
    the ingest lock unless ``lock`` is False (:class:`~clipindex.errors.LockHeldError` while an ingest runs).
    ``on_round(round, changed)`` is called after each round.
    """
    started = time.monotonic()
    guard = IngestLock(store.lock_path, store.describe()) if lock else None
    if guard is not None:
        guard.acquire()
    try:
        store.collection_info()
        changed = False
        rounds = 0
        while rounds < MAX_ROUNDS:
            rounds += 1
            did = store.optimize()
            if on_round is not None:
                on_round(rounds, did)
            changed = changed or did
            if not did:
                break
        store.flush()
        points = store.count(exact=True)
        segments = quantized = None
        layout = getattr(store, "segment_layout", None)
        if callable(layout):
            segments, quantized = layout()
    finally:
        if guard is not None:
            guard.release()
    return OptimizeReport(
        store=store.describe(),
        points=points,
        rounds=rounds,
        changed=changed,
        seconds=time.monotonic() - started,
        segments=segments,
        quantized_segments=quantized,
    )
