"""``clipindex status``: what model is configured, where the store is, what the collection holds, and how the
last ingest went. Library API: :func:`collect_status` -> :class:`Status` (``as_json()``, ``format()``).

Nothing is created or written. It works before any ingest (the collection is reported as absent) and
without a model folder (the model is reported as missing). A running ingest is shown with its live progress
(:mod:`clipindex.ingest.live`). The embedded store is read in turn with other processes (:mod:`clipindex.store.turns`);
one that stays in use past the store's wait is reported as busy, with everything else still shown.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipindex.display import aligned, printable
from clipindex.errors import (
    CollectionNotFoundError,
    ModelNotFoundError,
    StoreBusyError,
    StoreDamagedError,
    StoreError,
)
from clipindex.ingest.live import read_live_progress
from clipindex.ingest.points import DATED_KEY, UNRECORDED_ENGINE
from clipindex.store.base import UNKNOWN_MODEL, VectorStore
from clipindex.store.edge import EdgeStore

if TYPE_CHECKING:
    from clipindex.ingest.failures import Remembered
    from clipindex.model.locate import ModelLocation

__all__ = [
    "CacheUse",
    "Report",
    "Status",
    "collect_report",
    "collect_status",
    "count_contradiction",
    "expected_points",
    "thumbnail_cache_dir",
    "tree_bytes",
]


@dataclass(frozen=True)
class Status:
    """Everything ``clipindex status`` reports. ``as_json()`` is what ``--json`` prints (these keys)."""

    #: the model folder that search/ingest would use
    model_dir: str
    #: its model name, source checkpoint and embedding dimension (None when the folder holds no model)
    model: str | None
    source_model: str | None
    embedding_dim: int | None
    #: why the model is unusable (missing, unreadable manifest), else None
    model_error: str | None
    #: the store: "embedded store <folder>" or "<server URL>, collection '<name>'" (never an API key)
    store: str
    collection: str
    collection_exists: bool
    #: the model name and dimension the collection was built with (None when it does not exist)
    collection_model: str | None
    collection_dim: int | None
    #: exact point count (None when the collection does not exist or is busy)
    points: int | None
    #: True when the model folder's model differs from the collection's (search would refuse)
    model_mismatch: bool
    #: the embedded store stayed in use by other processes past the wait (``busy_reason`` says by whom)
    busy: bool
    #: the last finished ingest: its summary (indexed, unchanged, reused, failed, removed, points, seconds,
    #: skipped_dirs, root, model, finished_at [epoch s]) plus finished_at_iso; None before the first one
    last_ingest: dict[str, Any] | None
    #: the ingest running now (root, pid, host, started_at [epoch s], phase, done, todo, images_per_s, eta_s,
    #: handoffs, started_at_iso), else None
    running_ingest: dict[str, Any] | None = None
    #: the progress an ingest left when it was killed (same keys), until the next run replaces it
    interrupted_ingest: dict[str, Any] | None = None
    busy_reason: str | None = None
    #: the engines and precisions that computed the collection's vectors over its runs ("openvino bf16",
    #: "onnxruntime fp32"; "unrecorded" for vectors whose runs did not record it), None before the first ingest;
    #: ``mixed_engines``: more than one (their vectors agree to cosine 0.9999: search is unaffected)
    engines: list[str] | None = None
    mixed_engines: bool = False
    #: the count contradicts the last ingest's summary: the store may be damaged (:func:`count_contradiction`)
    integrity_warning: str | None = None
    #: points whose payload carries the date and camera fields (``taken_at_source``); the others get them on the
    #: next ingest (None when the collection does not exist or is busy)
    dated_points: int | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Readable ``key  value`` lines."""
        return aligned([(key, printable(value)) for key, value in self.rows()])

    def rows(self) -> list[tuple[str, str]]:
        """The ``(key, value)`` pairs :meth:`format` prints, in order (values not yet escaped)."""
        rows: list[tuple[str, str]] = []
        if self.model is not None:
            rows.append(("model", f"{self.model} ({self.embedding_dim}-d, from {self.source_model})"))
            rows.append(("model dir", self.model_dir))
        else:
            rows.append(("model", f"none: {self.model_error}"))
        rows.append(("store", self.store))
        if self.running_ingest is not None:
            rows.append(("ingest", "running: " + _progress_line(self.running_ingest)))
        elif self.interrupted_ingest is not None:
            rows.append(("ingest", "interrupted (killed): " + _progress_line(self.interrupted_ingest)))
        if self.busy:
            rows.append(("collection", f"{self.collection}: {self.busy_reason or 'in use by another process'}"))
        elif not self.collection_exists:
            rows.append(("collection", f"{self.collection}: nothing ingested yet; run `clipindex ingest DIR`"))
        else:
            built = (
                f"built with {self.collection_model} ({self.collection_dim}-d)"
                if self.collection_model is not None
                else "unreadable"
            )
            rows.append(("collection", f"{self.collection}: {built}"))
            rows.append(("points", f"{self.points:,}" if self.points is not None else "unknown"))
            if self.dated_points is not None and self.points:
                dated = f"{self.dated_points:,} of {self.points:,} points"
                if self.dated_points < self.points:
                    dated += " (the next ingest adds them to the others, without re-embedding)"
                rows.append(("dates", dated))
            if self.engines:
                rows.append(("engine", ("mixed: " if self.mixed_engines else "") + ", ".join(self.engines)))
            if self.integrity_warning is not None:
                rows.append(("warning", self.integrity_warning))
            if self.model_mismatch:
                rows.append(
                    (
                        "warning",
                        f"the model dir holds {self.model} ({self.embedding_dim}-d), not the collection's "
                        f"{self.collection_model}: search would refuse; use the model that built the collection",
                    )
                )
        rows.append(("last ingest", _ingest_line(self.last_ingest)))
        return rows


def _ingest_line(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "never"
    if summary.get("error"):
        return f"unreadable ({summary['error']})"
    parts: list[str] = []
    when = summary.get("finished_at_iso")
    if when:
        parts.append(str(when))
    if summary.get("root"):
        parts.append(str(summary["root"]))
    counts = []
    for key in ("indexed", "reused", "unchanged", "failed", "removed"):
        if isinstance(summary.get(key), int):
            counts.append(f"{key} {summary[key]}")
    if counts:
        parts.append(", ".join(counts))
    if isinstance(summary.get("points"), int):
        parts.append(f"{summary['points']:,} points")
    if isinstance(summary.get("seconds"), (int, float)):
        parts.append(f"{summary['seconds']:.1f} s")
    return "; ".join(parts) or "unknown"


def _progress_line(progress: Mapping[str, Any]) -> str:
    parts = [f"pid {progress.get('pid', '?')} since {progress.get('started_at_iso') or 'an unknown time'}"]
    if progress.get("root"):
        parts.append(str(progress["root"]))
    done, todo = progress.get("done"), progress.get("todo")
    if isinstance(todo, int) and isinstance(done, int):
        share = f" ({100 * done / todo:.0f} %)" if todo else ""
        parts.append(f"{done:,} of {todo:,} files{share}")
    else:
        parts.append(str(progress.get("phase") or "starting"))
    rate, eta = progress.get("images_per_s"), progress.get("eta_s")
    if isinstance(rate, (int, float)):
        parts.append(f"{rate:.1f} img/s")
    if isinstance(eta, (int, float)):
        parts.append(f"ETA {_duration(eta)}")
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def ingest_progress(lock_path: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(running, interrupted): the live progress of the ingest(s) that lock ``lock_path`` (or its ``--shard``
    variants) and of one that was killed, each None when there is none."""
    running = interrupted = None
    try:
        candidates = sorted(lock_path.parent.glob(f"{lock_path.stem}*.progress.json"))
    except OSError:
        candidates = []
    for path in candidates:
        progress = read_live_progress(path.with_name(path.name.removesuffix(".progress.json") + ".lock"))
        if progress is None:
            continue
        progress["started_at_iso"] = _iso(progress.get("started_at"))
        if progress.pop("running"):
            running = running or progress
        else:  # a dead run has no rate and no ETA
            progress["images_per_s"] = progress["eta_s"] = None
            interrupted = interrupted or progress
    return running, interrupted


def _iso(epoch: Any) -> str | None:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))


def expected_points(store: VectorStore) -> int | None:
    """The point count the last ingest saved, when the store's count must still equal it: None while an ingest
    runs or after one was killed (its writes are partial), after a ``--shard`` run (other shards write too), and
    for a server (other machines may write)."""
    if not isinstance(store, EdgeStore):
        return None
    try:
        summary = store.load_summary()
    except StoreError:
        return None
    if not summary or summary.get("shard"):
        return None
    points = summary.get("points")
    if not isinstance(points, int) or isinstance(points, bool):
        return None
    running, interrupted = ingest_progress(store.lock_path)
    if running is not None or interrupted is not None:
        return None
    return points


def count_contradiction(store: VectorStore, *, exact: int | None = None) -> str | None:
    """A one-line warning when the collection's count contradicts the last ingest's summary, else None.

    ``exact``: the exact count, when the caller has it; otherwise the engine's fast count is compared first and the
    exact one only when they differ (a search pays for one ``info()`` call)."""
    expected = expected_points(store)
    if expected is None:
        return None
    count = exact
    if count is None:
        if store.count(exact=False) == expected:
            return None
        count = store.count(exact=True)
    if count == expected:
        return None
    assert isinstance(store, EdgeStore)  # expected_points() is None for the others
    return (
        f"{store.describe()} holds {count:,} points, but the last ingest left {expected:,}: the store may be damaged "
        f"and answers incomplete; run `{store.check_command(repair=False)}` (`--repair` rebuilds it)"
    )


def collect_status(model_dir: str | Path, store: VectorStore) -> Status:
    """Gather the status of ``model_dir`` and ``store`` (opened read-only here; close it afterwards).

    Raises the store's errors other than "no collection" and "busy" (e.g. an unreachable server).
    """
    from clipindex.model.manifest import ModelManifest

    model = source = error = None
    dim: int | None = None
    try:
        manifest = ModelManifest.load(model_dir)
        model, source, dim = manifest.model_name, manifest.source_model, manifest.embedding_dim
    except ModelNotFoundError as exc:
        error = " ".join(str(exc).split())

    running, interrupted = ingest_progress(store.lock_path)
    exists = busy = False
    busy_reason: str | None = None
    collection_model: str | None = None
    collection_dim: int | None = None
    points: int | None = None
    dated: int | None = None
    damaged: str | None = None
    try:
        info = store.collection_info()
        exists = True
        collection_model, collection_dim = info.model_name, info.vector_dim
        points = store.count(exact=True)
        dated = store.count_with(DATED_KEY)
    except CollectionNotFoundError:
        pass
    except StoreBusyError as exc:
        busy = exists = True
        busy_reason = str(exc)
    except StoreDamagedError as exc:  # everything else is still shown, with the way out
        exists = True
        damaged = " ".join(str(exc).split())

    summary: dict[str, Any] | None = None
    if exists:
        try:
            summary = store.load_summary()
        except StoreBusyError:
            summary = None
        except StoreError as exc:  # the summary is a report, not data: status still shows the rest
            summary = {"error": " ".join(str(exc).split())}
    engines: list[str] | None = None
    if summary is not None:
        summary = dict(summary)
        summary["finished_at_iso"] = _iso(summary.get("finished_at"))
        recorded = summary.get("engines")
        if isinstance(recorded, list):
            engines = [str(label) for label in recorded]
        elif "error" not in summary:
            engines = [UNRECORDED_ENGINE]
    mismatch = bool(
        exists
        and not busy
        and model is not None
        and collection_model is not None
        and (collection_dim != dim or collection_model not in (model, UNKNOWN_MODEL))
    )
    warning = damaged
    if points is not None:
        try:
            warning = count_contradiction(store, exact=points)
        except StoreError as exc:
            warning = " ".join(str(exc).split())
    return Status(
        integrity_warning=warning,
        model_dir=str(model_dir),
        model=model,
        source_model=source,
        embedding_dim=dim,
        model_error=error,
        store=store.describe(),
        collection=store.collection,
        collection_exists=exists,
        collection_model=collection_model,
        collection_dim=collection_dim,
        points=points,
        model_mismatch=mismatch,
        busy=busy,
        last_ingest=summary,
        running_ingest=running,
        interrupted_ingest=interrupted,
        busy_reason=busy_reason,
        engines=engines,
        mixed_engines=engines is not None and len(engines) > 1,
        dated_points=dated,
    )


# --- the whole report: what ``clipindex status`` and ``GET /api/v1/status`` show --------------------------------


def tree_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def thumbnail_cache_dir() -> Path | None:
    """Where ``clipindex serve`` caches thumbnails: ``<cache>/thumbnails`` (:func:`clipindex.settings.cache_dir`)."""
    from clipindex.settings import cache_dir

    root = cache_dir()
    return root / "thumbnails" if root is not None else None


@dataclass(frozen=True)
class CacheUse:
    """A cache folder (None: caching is off) and the bytes it holds."""

    dir: str | None
    bytes: int

    @classmethod
    def of(cls, folder: Path | None) -> CacheUse:
        return cls(str(folder) if folder is not None else None, tree_bytes(folder) if folder is not None else 0)

    def line(self) -> str:
        return f"{self.bytes / 1e6:.1f} MB in {self.dir} (safe to delete)" if self.dir else "off"


@dataclass(frozen=True)
class Report:
    """:class:`Status` plus where the model folder came from, the remembered failures and the caches."""

    status: Status
    #: which rule chose the model folder (flag, environment, collection, default)
    model_dir_from: str
    failed: tuple[Remembered, ...]
    model_cache: CacheUse
    thumbnail_cache: CacheUse

    @property
    def busy(self) -> bool:
        return self.status.busy

    def as_json(self) -> dict[str, Any]:
        """What ``clipindex status --json`` prints."""
        data = self.status.as_json()
        data["model_dir_from"] = self.model_dir_from
        data["failed_files"] = len(self.failed)
        data["model_cache"] = asdict(self.model_cache)
        data["thumbnail_cache"] = asdict(self.thumbnail_cache)
        return data

    def rows(self) -> list[tuple[str, str]]:
        """The ``(key, value)`` lines ``clipindex status`` prints (values not yet escaped)."""
        lines: list[tuple[str, str]] = []
        for key, value in self.status.rows():
            if key == "model dir":  # which rule chose it (--model-dir, the environment, the collection, the default)
                value = f"{value}  (from {self.model_dir_from})"
            lines.append((key, value))
        failed = (
            f"{len(self.failed)} remembered (not decoded again until they change; "
            "`clipindex status --failed` lists them, `ingest --retry-failed` retries)"
            if self.failed
            else "none"
        )
        lines += [
            ("failed files", failed),
            ("model cache", self.model_cache.line()),
            ("thumbnails", self.thumbnail_cache.line()),
        ]
        return lines

    def format(self) -> str:
        return aligned([(key, printable(value)) for key, value in self.rows()])


def collect_report(location: ModelLocation, store: VectorStore) -> Report:
    """:func:`collect_status` of the located model and ``store`` (opened here; close it afterwards), with the
    remembered failures (sorted by path) and the sizes of the optimised-model and thumbnail caches."""
    from clipindex.ingest.failures import FailureMemory
    from clipindex.model.encode import ort_cache_dir

    status = collect_status(location.path, store)
    memory = FailureMemory.for_store(store)
    model_cache = ort_cache_dir()
    return Report(
        status=status,
        model_dir_from=location.origin.value,
        failed=tuple(sorted(memory.entries.values(), key=lambda e: e.path)),
        # the folder named is the cache's root (safe to delete); the bytes are ONNX Runtime's models in it
        model_cache=CacheUse(
            str(model_cache) if model_cache is not None else None,
            tree_bytes(model_cache / "ort") if model_cache is not None else 0,
        ),
        thumbnail_cache=CacheUse.of(thumbnail_cache_dir()),
    )
