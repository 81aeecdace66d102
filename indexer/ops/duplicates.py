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
* Cost: one read of the payloads and the vectors; the vectors are held as float16 (``N * D * 2`` bytes, 1 GB at 1M
  points of 512-d) and compared in float32 blocks (:data:`BLOCK` rows); a pair that scores within
  :data:`CANDIDATE_MARGIN` of the threshold in float16 is scored again on the stored float32 vectors, so the
  result is the float32 one. Time grows as ``N**2 * D``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from clipindex.errors import CollectionNotFoundError, NothingIndexedError
from clipindex.ops.results import resolve_path_prefix
from clipindex.store.base import VectorStore

__all__ = [
    "BLOCK",
    "CANDIDATE_MARGIN",
    "DEFAULT_MIN_SIMILARITY",
    "DuplicateGroup",
    "DuplicateMember",
    "DuplicateReport",
    "components",
    "find_duplicates",
    "linked",
    "similar_pairs",
]

#: cosine similarity at or above which two photos are near-duplicates (immich's cosine distance 0.01)
DEFAULT_MIN_SIMILARITY = 0.99
#: rows of one block of the pairwise comparison (a BLOCK x BLOCK float32 score block is 64 MB)
BLOCK = 4096
#: how far below the threshold a float16 score may fall and still be checked in float32 (float16 rounding of
#: unit vectors moves a cosine by < 1e-3)
CANDIDATE_MARGIN = 2e-3
#: payload fields read
FIELDS: tuple[str, ...] = ("path", "path_bytes", "sha256", "width", "height", "mtime", "size")
#: vectors fetched per store call
FETCH_CHUNK = 4096


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
    """What :func:`find_duplicates` found: the groups (sorted), how many points were scanned, the threshold and
    the folder (absolute) the scan was limited to."""

    groups: tuple[DuplicateGroup, ...]
    scanned: int
    min_similarity: float
    path_prefix: str | None

    @property
    def copies(self) -> list[DuplicateMember]:
        """Every member that is not its group's best, in group order."""
        return [m for g in self.groups for m in g.copies]

    def as_json(self) -> dict[str, Any]:
        return {
            "min_similarity": self.min_similarity,
            "path_prefix": self.path_prefix,
            "scanned": self.scanned,
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


def similar_pairs(
    vectors: npt.NDArray[Any],
    min_similarity: float,
    *,
    block: int = BLOCK,
    margin: float = 0.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Index pairs ``(i, j)``, ``i < j``, of the rows of ``vectors`` (unit-norm, any float dtype) whose dot product
    is ``>= min_similarity - margin``: blocked float32 matrix products, never the whole ``N x N`` matrix."""
    n = len(vectors)
    firsts: list[npt.NDArray[np.int64]] = []
    seconds: list[npt.NDArray[np.int64]] = []
    cut = np.float32(min_similarity - margin)
    for i0 in range(0, n, block):
        rows = np.asarray(vectors[i0 : i0 + block], dtype=np.float32)
        for j0 in range(i0, n, block):
            cols = rows if j0 == i0 else np.asarray(vectors[j0 : j0 + block], dtype=np.float32)
            ii, jj = np.nonzero(rows @ cols.T >= cut)
            if j0 == i0:  # the diagonal block: each pair once, never a point with itself
                upper = ii < jj
                ii, jj = ii[upper], jj[upper]
            if len(ii):
                firsts.append(ii.astype(np.int64) + i0)
                seconds.append(jj.astype(np.int64) + j0)
    if not firsts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    return np.concatenate(firsts), np.concatenate(seconds)


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
    store: VectorStore,
    *,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    path_prefix: str | os.PathLike[str] | None = None,
    block: int = BLOCK,
    on_progress: Callable[[str], None] | None = None,
) -> DuplicateReport:
    """The groups of exact copies and near-duplicates among the store's points (module doc for the rules).

    ``store``'s collection is read, never created or changed; an absent collection raises
    :class:`~clipindex.errors.NothingIndexedError` (an empty one has no groups). ``min_similarity`` must be a
    finite number in ``[-1, 1]`` (:class:`ValueError` otherwise). ``on_progress`` gets one line per phase.
    """
    if not (math.isfinite(min_similarity) and -1.0 <= min_similarity <= 1.0):
        raise ValueError(f"min_similarity must be a number between -1 and 1, not {min_similarity}")
    prefix = resolve_path_prefix(path_prefix)
    try:
        info = store.collection_info()
    except CollectionNotFoundError:
        raise NothingIndexedError(
            f"nothing is indexed in {store.describe()} (no collection {store.collection!r}): "
            "run `clipindex ingest DIR` first"
        ) from None
    records = sorted(
        (
            (str(p.get("path", "")), pid, p)
            for pid, p in store.iter_payloads(list(FIELDS))
            if _under(str(p.get("path", "")), prefix)
        ),
        key=lambda r: (r[0], r[1]),
    )
    n = len(records)
    ids = [pid for _path, pid, _p in records]
    if on_progress is not None:
        on_progress(f"read {n:,} payloads; reading vectors")
    half = np.zeros((n, info.vector_dim), dtype=np.float16)
    for start in range(0, n, FETCH_CHUNK):
        chunk = ids[start : start + FETCH_CHUNK]
        got = store.get_vectors(chunk)
        for k, pid in enumerate(chunk, start=start):
            vec = got.get(pid)
            if vec is not None:
                half[k] = vec
    store.release_memory()  # the engine's pages read so far would count in this process's RSS
    if on_progress is not None:
        on_progress(f"comparing {n:,} vectors")
    ii, jj = similar_pairs(half, min_similarity, block=block, margin=CANDIDATE_MARGIN)
    del half
    candidates = sorted(set(ii.tolist()) | set(jj.tolist()))
    exact = _float32_vectors(store, [ids[k] for k in candidates])
    pairs: list[tuple[int, int]] = []
    for a, b in zip(ii.tolist(), jj.tolist(), strict=True):
        va, vb = exact.get(ids[a]), exact.get(ids[b])
        if va is not None and vb is not None and linked(float(va @ vb), min_similarity):
            pairs.append((a, b))
    by_hash: dict[str, list[int]] = {}
    for k, (_path, _pid, payload) in enumerate(records):
        sha = payload.get("sha256")
        if isinstance(sha, str) and sha:
            by_hash.setdefault(sha, []).append(k)
    for same in by_hash.values():
        pairs.extend((same[0], other) for other in same[1:] if linked(-1.0, min_similarity, same_content=True))
    found = components(n, pairs)
    need = [ids[k] for g in found for k in g if ids[k] not in exact]
    exact.update(_float32_vectors(store, need))
    groups = [_group(records, g, exact) for g in found]
    groups.sort(key=lambda g: (g.members[0].path, g.members[0].id))
    return DuplicateReport(tuple(groups), n, float(min_similarity), prefix)


def _float32_vectors(store: VectorStore, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
    out: dict[str, npt.NDArray[np.float32]] = {}
    for start in range(0, len(ids), FETCH_CHUNK):
        out.update(store.get_vectors(ids[start : start + FETCH_CHUNK]))
    return out


def _group(
    records: Sequence[tuple[str, str, dict[str, Any]]], nodes: Sequence[int], vectors: dict[str, npt.NDArray[Any]]
) -> DuplicateGroup:
    plain = [
        DuplicateMember(
            path=path,
            id=pid,
            width=_int_or_none(p.get("width")),
            height=_int_or_none(p.get("height")),
            mtime=_float_or_none(p.get("mtime")),
            size=_int_or_none(p.get("size")),
            sha256=p.get("sha256") if isinstance(p.get("sha256"), str) else None,
            similarity=1.0,
            path_bytes=p.get("path_bytes") if isinstance(p.get("path_bytes"), str) else None,
        )
        for path, pid, p in (records[k] for k in nodes)
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
