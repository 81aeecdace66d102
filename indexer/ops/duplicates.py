"""Duplicate photos: the library API behind ``clipindex duplicates``.

:func:`find_duplicates` reads every point once and returns :class:`DuplicateGroup` rows; nothing is deleted.

* Two points are *linked* when they hold the same file content (equal stored ``sha256``) or when the cosine
  similarity of their vectors is ``>= min_similarity`` (:func:`linked`). A group is a connected component of
  that link graph with two or more members (union-find, :func:`components`): a chain ``a~b~c`` is one group even
  when ``a`` and ``c`` are not linked themselves. A group whose members all hold the same ``sha256`` is an
  ``"exact"`` group, any other a ``"near"`` one.
* ``path_prefix`` limits the scan to one folder (or file), with ``clipindex search --path-prefix``'s rules: a
  relative path is taken against the current directory, ``/a/photos`` never matches ``/a/photos2``.
* The *best* member of a group is the one to keep: most pixels (width * height), then the oldest mtime, then the
  smallest path. Every other member is a copy (:attr:`DuplicateReport.copies`).
* Output is deterministic: members sorted by path, groups by their first member's path.
* How the vectors are compared (:mod:`clipindex.ops.pairs`): up to :data:`EXACT_MAX_POINTS` points, every pair
  (``method="exact"``, time ``N**2 * D``); above it, only pairs that share a cell of a k-means index built for
  the scan (``method="cells"``, time linear in ``N``), checked against an exact scan of :data:`CHECK_SAMPLE`
  sampled points (:attr:`DuplicateReport.sampled_recall`). ``method`` forces either.
* Cost: one scan of the store's vectors, held as float16 (``N * D * 2`` bytes, 1 GB at 1M points of 512-d) and
  compared in float32; a pair that scores within :data:`CANDIDATE_MARGIN` of the threshold in float16 is scored
  again on the stored float32 vectors, so every link is decided in float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from clipindex.errors import CollectionNotFoundError, NothingIndexedError
from clipindex.ops.pairs import BLOCK, SampledRecall, cell_pairs, exact_pairs, sampled_recall
from clipindex.ops.results import resolve_path_prefix
from clipindex.settings import DEFAULT_MIN_SIMILARITY
from clipindex.store.base import CollectionInfo

__all__ = [
    "CANDIDATE_MARGIN",
    "CHECK_SAMPLE",
    "DEFAULT_MIN_SIMILARITY",
    "EXACT_MAX_POINTS",
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicateReport",
    "DuplicateSource",
    "Method",
    "components",
    "find_duplicates",
    "linked",
]

#: how far below the threshold a float16 score may fall and still be checked in float32 (float16 rounding of
#: unit vectors moves a cosine by < 1e-3)
CANDIDATE_MARGIN = 2e-3
#: ``method="auto"`` compares every pair up to this many points, and uses the cell index above
EXACT_MAX_POINTS = 150_000
#: points the cell index's result is checked on, each against every point
CHECK_SAMPLE = 2000
#: payload fields read for every point, and for the members of a group
SCAN_FIELDS: tuple[str, ...] = ("path", "sha256")
MEMBER_FIELDS: tuple[str, ...] = ("path", "path_bytes", "sha256", "width", "height", "mtime", "size")
#: vectors fetched per store call
FETCH_CHUNK = 4096

Method = Literal["auto", "exact", "cells"]
T = TypeVar("T")


class DuplicateSource(Protocol):
    """What :func:`find_duplicates` reads: any :class:`~clipindex.store.base.VectorStore` (``clipindex serve``
    passes one whose every call goes to its store process)."""

    @property
    def collection(self) -> str: ...

    def describe(self) -> str: ...

    def collection_info(self) -> CollectionInfo: ...

    def count(self, exact: bool = True) -> int: ...

    def iter_vector_pages(
        self, fields: Sequence[str], page_size: int = 1000
    ) -> Iterable[tuple[list[str], list[dict[str, Any]], npt.NDArray[np.float32]]]: ...

    def release_memory(self) -> None: ...

    def get_vectors(self, ids: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]: ...

    def get_payloads(self, ids: Iterable[str], fields: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    def yield_to_readers(self) -> int: ...


@dataclass(frozen=True)
class DuplicateMember:
    """One file of a group: its stored path, point id, pixel size, mtime (s), byte size, content hash, and the
    cosine similarity of its vector to the group's best member's (1.0 for the best)."""

    path: str
    id: str
    width: int | None
    height: int | None
    mtime: float | None
    size: int | None
    sha256: str | None
    similarity: float
    path_bytes: str | None = None

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "similarity": self.similarity,
            "width": self.width,
            "height": self.height,
            "mtime": self.mtime,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.path_bytes is not None:
            data["path_bytes"] = self.path_bytes
        return data


@dataclass(frozen=True)
class DuplicateGroup:
    """A group of two or more linked files (members sorted by path); ``best`` is the one to keep."""

    kind: Literal["exact", "near"]
    members: tuple[DuplicateMember, ...]
    best: DuplicateMember

    @property
    def copies(self) -> tuple[DuplicateMember, ...]:
        """The members other than :attr:`best`, by path."""
        return tuple(m for m in self.members if m is not self.best)

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "best": self.best.path, "members": [m.as_json() for m in self.members]}


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates` found: the groups (sorted), how many points were scanned, the threshold, the
    folder (absolute) the scan was limited to, how the vectors were compared (``"exact"`` or ``"cells"``) and,
    for the cell index, its check on sampled points."""

    groups: tuple[DuplicateGroup, ...]
    scanned: int
    min_similarity: float
    path_prefix: str | None
    method: Literal["exact", "cells"] = "exact"
    sampled_recall: SampledRecall | None = None

    @property
    def copies(self) -> list[DuplicateMember]:
        """Every member that is not its group's best, in group order."""
        return [m for g in self.groups for m in g.copies]

    def as_json(self) -> dict[str, Any]:
        check = self.sampled_recall
        return {
            "min_similarity": self.min_similarity,
            "path_prefix": self.path_prefix,
            "scanned": self.scanned,
            "method": self.method,
            "sampled_recall": None
            if check is None
            else {"sampled": check.sampled, "expected": check.expected, "found": check.found, "recall": check.recall},
            "groups": [g.as_json() for g in self.groups],
        }


# --- the rule ------------------------------------------------------------------------------------------------


def linked(similarity: float, min_similarity: float, same_content: bool = False) -> bool:
    """The one rule: two files belong together when their content is the same or their cosine similarity is
    ``>= min_similarity``."""
    return same_content or similarity >= min_similarity


def components(count: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two or more nodes) of the graph on ``0..count-1`` with edges ``pairs``, each
    sorted, sorted by their smallest node (union-find with path halving)."""
    parent = list(range(count))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            if ra < rb:
                parent[rb] = ra
            else:
                parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for node in range(count):
        groups.setdefault(find(node), []).append(node)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


# --- the scan ------------------------------------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _under(path: str, prefix: str | None) -> bool:
    if prefix is None:
        return True
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _best(members: Sequence[DuplicateMember]) -> DuplicateMember:
    def key(m: DuplicateMember) -> tuple[int, float, str]:
        return (-m.pixels, m.mtime if m.mtime is not None else math.inf, m.path)

    return min(members, key=key)


def find_duplicates(
    store: DuplicateSource,
    *,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    path_prefix: str | os.PathLike[str] | None = None,
    method: Method = "auto",
    block: int = BLOCK,
    cells: int | None = None,
    probes: int | None = None,
    check_sample: int = CHECK_SAMPLE,
    on_progress: Callable[[str], None] | None = None,
) -> DuplicateReport:
    """The groups of exact copies and near-duplicates among the store's points (module doc for the rules).

    ``store``'s collection is read, never created or changed; an absent collection raises
    :class:`~clipindex.errors.NothingIndexedError` (an empty one has no groups). ``min_similarity`` must be a
    finite number in ``[-1, 1]`` (:class:`ValueError` otherwise). ``block`` is the exact scan's block size,
    ``cells``/``probes`` the cell index's shape (:func:`clipindex.ops.pairs.cell_pairs`'s defaults when None).
    ``on_progress`` gets one line per phase.
    """
    if not (math.isfinite(min_similarity) and -1.0 <= min_similarity <= 1.0):
        raise ValueError(f"min_similarity must be a number between -1 and 1, not {min_similarity}")
    if method not in ("auto", "exact", "cells"):
        raise ValueError(f"method must be 'auto', 'exact' or 'cells', not {method!r}")
    prefix = resolve_path_prefix(path_prefix)
    try:
        info = store.collection_info()
    except CollectionNotFoundError:
        raise NothingIndexedError(
            f"nothing is indexed in {store.describe()} (no collection {store.collection!r}): "
            "run `clipindex ingest DIR` first"
        ) from None
    ids, hashes, half = _scan(store, info.vector_dim, store.count(exact=False), prefix)
    n = len(ids)
    rows, same_content = _by_content(hashes, min_similarity)  # a byte copy is linked by hash, not compared
    half = _compact(half, rows)
    chosen: Literal["exact", "cells"] = method if method != "auto" else ("exact" if n <= EXACT_MAX_POINTS else "cells")
    if on_progress is not None:
        on_progress(f"comparing {n:,} vectors ({'every pair' if chosen == 'exact' else 'by cells'})")
    cut = min_similarity - CANDIDATE_MARGIN
    check: SampledRecall | None = None
    if chosen == "exact":  # the store is not read while comparing: processes waiting for it go in between
        ii, jj = exact_pairs(half, cut, block=block, between=store.yield_to_readers)
    else:
        ii, jj = cell_pairs(
            half, cut, cells=cells, probes=probes, on_progress=on_progress, between=store.yield_to_readers
        )
        if on_progress is not None:
            on_progress(f"checking the cells against every pair of {min(check_sample, n):,} sampled points")
        check = sampled_recall(half, cut, ii, jj, sample=check_sample, between=store.yield_to_readers)
    del half
    ii, jj = rows[ii], rows[jj]
    candidates = sorted(set(ii.tolist()) | set(jj.tolist()))
    exact = _fetched(store.get_vectors, [ids[k] for k in candidates])
    pairs: list[tuple[int, int]] = []
    for a, b in zip(ii.tolist(), jj.tolist(), strict=True):
        va, vb = exact.get(ids[a]), exact.get(ids[b])
        if va is not None and vb is not None and linked(float(va @ vb), min_similarity):
            pairs.append((a, b))
    pairs.extend(same_content)
    found = components(n, pairs)
    need = [ids[k] for g in found for k in g if ids[k] not in exact]
    exact.update(_fetched(store.get_vectors, need))
    payloads = _fetched(lambda chunk: store.get_payloads(chunk, MEMBER_FIELDS), [ids[k] for g in found for k in g])
    groups = [_group([(ids[k], payloads.get(ids[k], {})) for k in g], exact) for g in found]
    groups.sort(key=lambda g: (g.members[0].path, g.members[0].id))
    return DuplicateReport(tuple(groups), n, float(min_similarity), prefix, chosen, check)


def _scan(
    store: DuplicateSource, dim: int, expected: int, prefix: str | None
) -> tuple[list[str], npt.NDArray[np.bytes_], npt.NDArray[np.float16]]:
    """Ids, content hashes and float16 vectors of the points under ``prefix``, in store order (paths are read
    again for the members of groups only: a million of them would hold 100 MB)."""
    ids: list[str] = []
    size = max(expected, 1)
    hashes = np.zeros(size, dtype="S64")
    half = np.zeros((size, dim), dtype=np.float16)  # pages are committed as rows are filled
    filled = 0
    for page_ids, page_payloads, vectors in store.iter_vector_pages(list(SCAN_FIELDS)):
        keep = [k for k, p in enumerate(page_payloads) if _under(str(p.get("path", "")), prefix)]
        if not keep:
            continue
        if filled + len(keep) > len(half):  # more points than the count said: grow by half again
            size = max(len(half) * 3 // 2, filled + len(keep))
            half = _grown(half, size)
            hashes = _grown(hashes, size)
        half[filled : filled + len(keep)] = vectors[keep]
        for k in keep:
            sha = page_payloads[k].get("sha256")
            hashes[filled] = sha.encode("ascii", "replace")[:64] if isinstance(sha, str) else b""
            ids.append(page_ids[k])
            filled += 1
    store.release_memory()  # the engine's pages read so far would count in this process's RSS
    return ids, hashes[:filled], half[:filled]


def _grown(array: npt.NDArray[Any], rows: int) -> npt.NDArray[Any]:
    out = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _by_content(
    hashes: npt.NDArray[np.bytes_], min_similarity: float
) -> tuple[npt.NDArray[np.int64], list[tuple[int, int]]]:
    """One sort of the content hashes gives both: the point numbers to compare (increasing: every point but those
    whose non-empty hash an earlier point holds), and the pairs linking every other holder of a hash to its
    first holder."""
    if not len(hashes):
        return np.zeros(0, dtype=np.int64), []
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    keep = np.zeros(len(hashes), dtype=bool)
    keep[order[starts]] = True
    keep[hashes == b""] = True
    pairs: list[tuple[int, int]] = []
    if linked(-1.0, min_similarity, same_content=True):
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            if e - s > 1 and ordered[s]:
                first = int(order[s])
                pairs.extend((first, int(other)) for other in order[s + 1 : e])
    return np.flatnonzero(keep).astype(np.int64), pairs


def _compact(half: npt.NDArray[np.float16], rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float16]:
    """``half[rows]`` for increasing ``rows``, moved down in place a chunk at a time (no second copy)."""
    if len(rows) == len(half):
        return half
    for start in range(0, len(rows), FETCH_CHUNK):
        chunk = rows[start : start + FETCH_CHUNK]
        half[start : start + len(chunk)] = half[chunk]
    return half[: len(rows)]


def _fetched(fetch: Callable[[Sequence[str]], dict[str, T]], ids: Sequence[str]) -> dict[str, T]:
    """``fetch(ids)`` a :data:`FETCH_CHUNK` at a time (through serve, each chunk is one store-process call)."""
    out: dict[str, T] = {}
    for start in range(0, len(ids), FETCH_CHUNK):
        out.update(fetch(ids[start : start + FETCH_CHUNK]))
    return out


def _group(records: Sequence[tuple[str, dict[str, Any]]], vectors: dict[str, npt.NDArray[Any]]) -> DuplicateGroup:
    """One group from its members' ``(id, payload)``."""
    plain = [
        DuplicateMember(
            path=str(p.get("path", "")),
            id=pid,
            width=_int_or_none(p.get("width")),
            height=_int_or_none(p.get("height")),
            mtime=_float_or_none(p.get("mtime")),
            size=_int_or_none(p.get("size")),
            sha256=p.get("sha256") if isinstance(p.get("sha256"), str) else None,
            similarity=1.0,
            path_bytes=p.get("path_bytes") if isinstance(p.get("path_bytes"), str) else None,
        )
        for pid, p in records
    ]
    best = _best(plain)
    ref = vectors.get(best.id)
    members: list[DuplicateMember] = []
    for m in plain:
        vec = vectors.get(m.id)
        score = 1.0 if m is best or ref is None or vec is None else float(np.float32(ref @ vec))
        members.append(m if m is best else DuplicateMember(**{**m.__dict__, "similarity": score}))
    members.sort(key=lambda m: (m.path, m.id))
    chosen = next(m for m in members if m.id == best.id)
    hashes = {m.sha256 for m in members}
    kind: Literal["exact", "near"] = "exact" if len(hashes) == 1 and None not in hashes else "near"
    return DuplicateGroup(kind, tuple(members), chosen)
