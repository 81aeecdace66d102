"""``clipindex check``: whether the embedded store can serve what the last ingest wrote, and its repair.

:func:`check_store` reads every point's payload and vector, compares the engine's exact count with the count the
last ingest saved (:func:`expected_points`), and runs a search for a stored vector, which must find that point.
It writes nothing. ``repair=True`` rebuilds a store with problems: it takes the ingest lock, copies every point
that reads back into a fresh shard (:meth:`~clipindex.store.edge.EdgeStore.rebuild_shard`: the old shard is
renamed aside, never deleted, and only once the new one is complete), saves the new count with the summary, and
checks again. The points it could not keep are gone from the index; their files are new to the next ingest, which
embeds them again.

:func:`~clipindex.ops.status.count_contradiction` is the cheap half that ``status`` and ``search`` run: the
count against the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clipindex.errors import CollectionNotFoundError, NothingIndexedError, StoreDamagedError, StoreError
from clipindex.lock import IngestLock
from clipindex.ops.status import count_contradiction, expected_points
from clipindex.store.base import Point, VectorStore
from clipindex.store.edge import EdgeStore

__all__ = ["CheckReport", "RepairReport", "check_store", "count_contradiction", "expected_points"]

#: points read per call while checking and copying
CHUNK = 1000
#: a stored vector searched for must come back first with at least this cosine (int8 scan, float32 rescoring)
SELF_MATCH = 0.99


@dataclass
class RepairReport:
    """What a repair did: points before (the engine's count), kept in the new shard, lost (counted or listed
    before, not kept), gained (kept but not counted before), and where the old shard went."""

    before: int
    kept: int
    lost: int
    gained: int
    #: what the last ingest counted minus what was kept: the files the next ingest embeds again
    to_reembed: int
    kept_aside: str | None


@dataclass
class CheckReport:
    """What :func:`check_store` found (``as_json()`` is ``clipindex check --json``)."""

    store: str
    collection: str
    #: the engine's exact count (None when the shard cannot be opened or counted)
    points: int | None = None
    #: points the engine lists, and of them those whose payload and vector read back
    listed: int | None = None
    readable: int = 0
    #: the count the last ingest saved (None when it cannot be compared: see :func:`expected_points`)
    expected: int | None = None
    #: None when a search for a stored vector found it; else what went wrong
    search_error: str | None = None
    problems: list[str] = field(default_factory=list)
    repair: RepairReport | None = None
    #: the check after the repair
    after: CheckReport | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def healthy_now(self) -> bool:
        """No problem, or none left after the repair."""
        return self.ok or (self.after is not None and self.after.ok)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["after"] = self.after.as_json() if self.after is not None else None
        data["seconds"] = round(self.seconds, 3)
        return data

    def lines(self) -> list[str]:
        """What ``clipindex check`` prints, one line each."""
        figures = []
        if self.points is not None:
            figures.append(f"{self.points:,} points")
        if self.listed is not None:
            figures.append(f"{self.readable:,} of {self.listed:,} listed readable")
        if self.expected is not None:
            figures.append(f"the last ingest left {self.expected:,}")
        figures.append("search works" if self.search_error is None else "search fails")
        head = f"{self.store}: " + ", ".join(figures)
        if self.ok:
            return [f"{head}: ok ({self.seconds:.1f} s)"]
        out = [f"{head}: {len(self.problems)} problem(s)"]
        out += [f"problem: {p}" for p in self.problems]
        if self.repair is not None:
            r = self.repair
            out.append(
                f"repaired: kept {r.kept:,} of {r.before:,} points (lost {r.lost:,}, gained {r.gained:,}); "
                f"the next ingest embeds the {r.to_reembed:,} missing image(s) again"
                + (f"; the old shard is kept at {r.kept_aside} (delete it when satisfied)" if r.kept_aside else "")
            )
            if self.after is not None:
                out += [f"after the repair: {line}" for line in self.after.lines()]
        return out


def check_store(
    store: VectorStore, *, repair: bool = False, on_progress: Callable[[str], None] | None = None
) -> CheckReport:
    """Check ``store`` (see the module doc); with ``repair``, rebuild it when a problem is found.

    Raises :class:`~clipindex.errors.NothingIndexedError` when there is no collection, ``StoreError`` for a server
    (a Qdrant server keeps its own integrity), ``LockHeldError`` when repairing while an ingest runs.
    """
    if not isinstance(store, EdgeStore):
        raise StoreError(
            f"clipindex check reads the embedded store; {store.describe()} is a Qdrant server, which checks its own "
            "storage (see its logs and /collections API)"
        )
    if not repair:
        return _check(store)
    with IngestLock(store.lock_path, store.describe()):
        report = _check(store)
        if report.ok:
            return report
        if on_progress is not None:
            on_progress(f"{store.describe()}: {len(report.problems)} problem(s); copying the readable points")
        report.repair = _repair(store, report)
        store.close()
        report.after = _check(store)
        return report


def _check(store: EdgeStore) -> CheckReport:
    started = time.monotonic()
    report = CheckReport(store=store.describe(), collection=store.collection)
    report.expected = expected_points(store)
    try:
        store.collection_info()
    except CollectionNotFoundError:
        raise NothingIndexedError(
            f"nothing to check in {store.describe()} (no collection {store.collection!r}); run `clipindex ingest DIR`"
        ) from None
    except StoreDamagedError as exc:
        report.problems.append(f"the shard does not open: {exc.__cause__ or exc}")
        report.search_error = "the shard does not open"
        report.seconds = time.monotonic() - started
        return report
    try:
        report.points = store.count(exact=True)
    except StoreDamagedError as exc:
        report.problems.append(f"the points cannot be counted: {exc}")
    ids = _list_ids(store, report)
    first: Point | None = None
    unreadable = 0
    if ids is not None:
        report.listed = len(ids)
        for start in range(0, len(ids), CHUNK):
            points, bad = store.read_points(ids[start : start + CHUNK])
            report.readable += len(points)
            unreadable += len(bad)
            if first is None and points:
                first = points[0]
            if bad and len(report.problems) < 8:
                pid, why = next(iter(bad.items()))
                report.problems.append(f"{len(bad)} point(s) unreadable near {pid}: {why}")
    report.search_error = _search_works(store, first)
    if report.search_error is not None:
        report.problems.append(f"search fails: {report.search_error}")
    if report.points is not None and report.listed is not None and report.points != report.listed:
        report.problems.append(f"the count says {report.points:,} points, the listing finds {report.listed:,}")
    if report.expected is not None and report.points is not None and report.points != report.expected:
        report.problems.append(f"the last ingest left {report.expected:,} points, the store holds {report.points:,}")
    if unreadable > 8:
        report.problems.append(f"{unreadable:,} point(s) unreadable in all")
    report.seconds = time.monotonic() - started
    return report


def _list_ids(store: EdgeStore, report: CheckReport) -> list[str] | None:
    try:
        return [pid for pid, _ in store.iter_payloads([], page_size=5 * CHUNK)]
    except StoreDamagedError as exc:
        report.problems.append(f"the points cannot be listed: {exc}")
        return None


def _search_works(store: EdgeStore, stored: Point | None) -> str | None:
    """None when a search answers (and finds ``stored`` first, when given); else what went wrong."""
    info = store.collection_info()
    if stored is None:
        query = np.zeros(info.vector_dim, dtype=np.float32)
        query[0] = 1.0
    else:
        query = stored.vector
    try:
        hits = store.search(query, limit=1)
    except StoreDamagedError as exc:
        return str(exc.__cause__ or exc)
    if stored is not None and (not hits or hits[0].score < SELF_MATCH):
        return f"a search for the vector of {stored.id} does not find it"
    if stored is None and store.count(exact=False) and not hits:
        return "a search finds nothing in a collection that counts points"
    return None


def _repair(store: EdgeStore, report: CheckReport) -> RepairReport:
    ids: list[str] = []
    if report.listed is not None:
        ids = [pid for pid, _ in store.iter_payloads([], page_size=5 * CHUNK)]

    def readable() -> Iterator[list[Point]]:
        for start in range(0, len(ids), CHUNK):
            points, _bad = store.read_points(ids[start : start + CHUNK])
            yield points

    before = max(report.points or 0, report.listed or 0)
    if report.points is None and report.listed is None:  # the shard did not open: count what the summary says
        before = report.expected or 0
    rebuilt = store.rebuild_shard(readable())
    kept = rebuilt.points
    expected = report.expected
    summary = _load_summary(store)
    if expected is None and summary is not None and isinstance(summary.get("points"), int):
        expected = summary["points"]
    if summary is not None:
        summary["points"] = kept
        summary["repaired"] = {"at": time.time(), "kept": kept, "lost": max(0, before - kept)}
        store.save_summary(summary)
    return RepairReport(
        before=before,
        kept=kept,
        lost=max(0, before - kept),
        gained=max(0, kept - before),
        to_reembed=max(0, (expected or before) - kept),
        kept_aside=str(rebuilt.kept_aside) if rebuilt.kept_aside is not None else None,
    )


def _load_summary(store: EdgeStore) -> dict[str, Any] | None:
    try:
        summary = store.load_summary()
    except StoreError:
        return None
    return dict(summary) if summary else None
