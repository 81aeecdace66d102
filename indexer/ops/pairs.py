"""Similar pairs among unit vectors: the comparison behind ``clipindex duplicates``.

Two ways, one contract: index pairs ``(i, j)``, ``i < j``, whose dot product is ``>= cut``, each pair once, as
two int64 arrays sorted by ``(i, j)``.

* :func:`exact_pairs` compares every row with every other in blocked float32 matrix products (:data:`BLOCK`
  rows a side, never the whole ``N x N`` matrix). Its cost grows as ``N**2 * D``.
* :func:`cell_pairs` compares only rows that share a *cell*, an inverted-file index built on the fly:

  1. ``cells`` centroids come from spherical k-means (:data:`KMEANS_ROUNDS` Lloyd rounds) on a seeded sample of
     at most :data:`KMEANS_SAMPLE_PER_CELL` rows per cell;
  2. every row gets the ``probes`` cells of highest ``score = dot(row, centroid) + offset[cell]``, the first of
     them its *home* cell. The per-cell offsets (:data:`BALANCE_ROUNDS` rounds on the sample, each moving a cell
     by :data:`BALANCE_STEP` of the sample's median top-to-``probes``-th score gap times the log of how many
     times its fair share of probes it drew) spread the rows evenly: without them a few hub cells near the
     data's mean direction draw most probes, and the work, which is the sum over cells of home rows times
     probing rows, grew 4x on clustered vectors;
  3. each cell's home rows are compared with every row that probes that cell.

  A pair ``(x, y)`` is found when ``y``'s home cell is among ``x``'s probes or the other way round. For a pair at
  cosine ``s`` the two rows' scores against any cell differ by at most ``|c| * sqrt(2 - 2s)`` (the offset is the
same for both), so a
  near-duplicate's home is almost always among its twin's first few cells: that is what keeps recall near 1 at
  high thresholds, and why :func:`default_probes` asks for more probes as the threshold falls. The cost is about
  ``N * (N / cells) * probes * D`` multiply-adds plus the k-means and the assignment (``N * cells * D``), so with
  ``cells ~ N / CELL_SIZE`` it grows linearly in ``N``. It is deterministic for a given input and ``seed``.
  Pairs missed are the price; :func:`sampled_recall` measures them against an exact scan of a sample of rows.

Inputs may be any float dtype (float16 copies keep a 1M x 512 scan at 1 GB); every product is float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK",
    "CELL_SIZE",
    "KMEANS_ROUNDS",
    "KMEANS_SAMPLE_PER_CELL",
    "SampledRecall",
    "assign_cells",
    "cell_pairs",
    "default_cells",
    "default_probes",
    "exact_pairs",
    "sampled_recall",
]

IntArray = npt.NDArray[np.int64]

#: rows of one block of the exact comparison (a BLOCK x BLOCK float32 score block is 64 MB)
BLOCK = 4096
#: rows per cell that :func:`default_cells` aims at
CELL_SIZE = 400
#: Lloyd rounds of the spherical k-means
KMEANS_ROUNDS = 6
#: k-means trains on at most this many sampled rows per cell
KMEANS_SAMPLE_PER_CELL = 48
#: rounds, and step (a fraction of the median score gap), of the per-cell offsets that even out the cells
BALANCE_ROUNDS = 10
BALANCE_STEP = 0.2
#: sampled rows per cell the offsets are tuned on
BALANCE_SAMPLE_PER_CELL = 16
#: rows assigned to their cells per matrix product (at 2,500 cells: 20 MB of scores, 40 MB of indices)
ASSIGN_CHUNK = 2048
#: home rows, and probing rows, per product inside one cell
CELL_ROWS = 2048
CELL_COLS = 16384


def _empty() -> tuple[IntArray, IntArray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def _unique_sorted(firsts: list[IntArray], seconds: list[IntArray], count: int) -> tuple[IntArray, IntArray]:
    if not firsts:
        return _empty()
    keys = np.unique(np.concatenate(firsts) * np.int64(count) + np.concatenate(seconds))
    return keys // count, keys % count


def _hits(scores: npt.NDArray[np.float32], threshold: np.float32) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``np.nonzero(scores >= threshold)``, row-major, looking into only the rows that hold a hit (hits are rare,
    and a full ``nonzero`` costs seven times the comparison)."""
    mask = scores >= threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if not len(rows):
        return rows, rows
    ii, jj = np.nonzero(mask[rows])
    return rows[ii], jj


def exact_pairs(
    vectors: npt.NDArray[Any], cut: float, *, block: int = BLOCK, between: Callable[[], object] | None = None
) -> tuple[IntArray, IntArray]:
    """Every pair of rows of ``vectors`` with dot product ``>= cut`` (all pairs compared); ``between`` is called
    after every block (``clipindex duplicates`` lets waiting processes use the store there)."""
    n = len(vectors)
    firsts: list[IntArray] = []
    seconds: list[IntArray] = []
    threshold = np.float32(cut)
    for i0 in range(0, n, block):
        rows = np.asarray(vectors[i0 : i0 + block], dtype=np.float32)
        for j0 in range(i0, n, block):
            cols = rows if j0 == i0 else np.asarray(vectors[j0 : j0 + block], dtype=np.float32)
            ii, jj = _hits(rows @ cols.T, threshold)
            if j0 == i0:  # the diagonal block: each pair once, never a row with itself
                upper = ii < jj
                ii, jj = ii[upper], jj[upper]
            if len(ii):
                firsts.append(ii.astype(np.int64) + i0)
                seconds.append(jj.astype(np.int64) + j0)
            if between is not None:
                between()
    return _unique_sorted(firsts, seconds, max(n, 1))


def default_cells(count: int) -> int:
    """Cells for ``count`` rows: about :data:`CELL_SIZE` rows each, at least one."""
    return max(1, round(count / CELL_SIZE))


def default_probes(cut: float) -> int:
    """Cells each row probes at threshold ``cut``: 8 at 0.98 and above, doubling for each halving of the cosine
    distance's headroom below that (16 at 0.96, 32 at 0.92), at most 64."""
    distance = max(1.0 - cut, 0.02)
    return int(min(64, 8 * 2 ** math.ceil(math.log2(distance / 0.02) - 1e-9)))


def _unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: npt.NDArray[np.float32] = x / norms
    return out


def _kmeans(
    vectors: npt.NDArray[Any],
    cells: int,
    rng: np.random.Generator,
    rounds: int = KMEANS_ROUNDS,
    between: Callable[[], object] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Unit centroids, and the sample they were trained on (float32)."""
    n = len(vectors)
    take = min(n, cells * KMEANS_SAMPLE_PER_CELL)
    sample = np.asarray(vectors[np.sort(rng.choice(n, size=take, replace=False))], dtype=np.float32)
    centroids = sample[rng.choice(take, size=cells, replace=False)].copy()
    dim = sample.shape[1]
    for _ in range(rounds):
        sums = np.zeros((cells, dim), dtype=np.float32)
        counts = np.zeros(cells, dtype=np.int64)
        for s in range(0, take, ASSIGN_CHUNK):  # a chunk at a time: no second copy of the sample
            rows = sample[s : s + ASSIGN_CHUNK]
            labels = np.argmax(rows @ centroids.T, axis=1)
            order = np.argsort(labels, kind="stable")
            ordered = labels[order]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sums[ordered[starts]] += np.add.reduceat(rows[order], starts, axis=0)
            counts += np.bincount(labels, minlength=cells)
        filled = counts > 0
        fresh = centroids.copy()
        fresh[filled] = _unit(sums[filled])
        empty = np.flatnonzero(~filled)
        if len(empty):  # an empty cell restarts on a random sampled row
            fresh[empty] = sample[rng.choice(take, size=len(empty), replace=False)]
        centroids = fresh
        if between is not None:
            between()
    return centroids, sample


def _top(scores: npt.NDArray[np.float32], probes: int) -> npt.NDArray[np.intp]:
    """Column numbers of each row's ``probes`` highest scores, highest first (ties by column). ``scores`` is
    negated in place (no copy of a large chunk)."""
    np.negative(scores, out=scores)
    if probes < scores.shape[1]:
        top = np.argpartition(scores, probes - 1, axis=1)[:, :probes]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    order = np.argsort(np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    out: npt.NDArray[np.intp] = np.take_along_axis(top, order, axis=1)
    return out


def _offsets(
    sample: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32], probes: int
) -> npt.NDArray[np.float32]:
    """Per-cell score offsets that give every cell about its fair share of the probes of (at most
    :data:`BALANCE_SAMPLE_PER_CELL` a cell of) the sample: of the rounds' offsets (none included), those whose
    work on the sample is least. Scores are recomputed a chunk at a time, never held."""
    cells = len(centroids)
    offsets = np.zeros(cells, dtype=np.float32)
    if probes >= cells:
        return offsets
    rows = sample[: cells * BALANCE_SAMPLE_PER_CELL]  # the sample is already a random draw
    fair = len(rows) * probes / cells

    def tally() -> tuple[npt.NDArray[np.float64], float, list[npt.NDArray[np.float32]]]:
        """Probes each cell draws, the work they make (home rows times probing rows, summed), the score gaps."""
        drawn = np.zeros(cells, dtype=np.float64)
        homes = np.zeros(cells, dtype=np.float64)
        gaps: list[npt.NDArray[np.float32]] = []
        for s in range(0, len(rows), ASSIGN_CHUNK):
            scores = rows[s : s + ASSIGN_CHUNK] @ centroids.T
            scores += offsets
            top = _top(scores, probes)  # negates scores
            drawn += np.bincount(top.reshape(-1), minlength=cells)
            homes += np.bincount(top[:, 0], minlength=cells)
            ends = np.take_along_axis(scores, top[:, [0, -1]], axis=1)  # negated: best and probes-th scores
            gaps.append(ends[:, 1] - ends[:, 0])
        return drawn, float(homes @ drawn), gaps

    drawn, work, gaps = tally()
    step = np.float32(BALANCE_STEP * float(np.median(np.concatenate(gaps))))
    best, best_work = offsets.copy(), work
    for _ in range(BALANCE_ROUNDS):
        # over-drawn cells step down, under-drawn ones up, by at most a few steps a round (a cell nobody draws
        # must not climb until everybody does)
        offsets -= step * np.clip(np.log((drawn + 1.0) / fair), -1.0, 2.0).astype(np.float32)
        drawn, work, _gaps = tally()
        if work < best_work:
            best, best_work = offsets.copy(), work
    return best


def _assign(
    vectors: npt.NDArray[Any],
    centroids: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.float32],
    probes: int,
    between: Callable[[], object] | None = None,
) -> npt.NDArray[np.int32]:
    """``(N, probes)`` cell numbers of every row, highest score first."""
    n = len(vectors)
    out = np.empty((n, probes), dtype=np.int32)
    for s in range(0, n, ASSIGN_CHUNK):
        scores = np.asarray(vectors[s : s + ASSIGN_CHUNK], dtype=np.float32) @ centroids.T
        scores += offsets
        out[s : s + ASSIGN_CHUNK] = _top(scores, probes)
        if between is not None and s % (16 * ASSIGN_CHUNK) == 0:
            between()
    return out


def _groups(labels: npt.NDArray[np.int32], cells: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rows sorted by label, and where each label's rows start (``cells + 1`` offsets)."""
    order = np.argsort(labels, kind="stable").astype(np.int64)
    bounds = np.searchsorted(labels[order], np.arange(cells + 1)).astype(np.int64)
    return order, bounds


def assign_cells(
    vectors: npt.NDArray[Any],
    cut: float,
    *,
    cells: int | None = None,
    probes: int | None = None,
    seed: int = 0,
    between: Callable[[], object] | None = None,
) -> npt.NDArray[np.int32]:
    """Steps 1 and 2 of the cell index (module doc): ``(N, probes)`` cell numbers of every row, its home first.
    ``cells`` defaults to :func:`default_cells`, ``probes`` to :func:`default_probes` (each at most the rows);
    ``between`` is called every second or so."""
    n = len(vectors)
    cells = max(1, min(n, cells if cells is not None else default_cells(n)))
    probes = max(1, min(cells, probes if probes is not None else default_probes(cut)))
    rng = np.random.default_rng(seed)
    centroids, sample = _kmeans(vectors, cells, rng, between=between)
    offsets = _offsets(sample, centroids, probes)
    del sample
    if between is not None:
        between()
    return _assign(vectors, centroids, offsets, probes, between)


def cell_pairs(
    vectors: npt.NDArray[Any],
    cut: float,
    *,
    cells: int | None = None,
    probes: int | None = None,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
    between: Callable[[], object] | None = None,
) -> tuple[IntArray, IntArray]:
    """The pairs with dot product ``>= cut`` among rows sharing a cell (module doc): most of :func:`exact_pairs`'s
    pairs, at a cost linear in the rows. ``between`` is called after every cell."""
    n = len(vectors)
    if n < 2:
        return _empty()
    assigned = assign_cells(vectors, cut, cells=cells, probes=probes, seed=seed, between=between)
    count, probes = int(assigned.max()) + 1, assigned.shape[1]
    if on_progress is not None:
        on_progress(f"{n:,} vectors in {count:,} cells, {probes} each; comparing within cells")
    home_order, home_bounds = _groups(assigned[:, 0], count)
    probe_order, probe_bounds = _groups(assigned.reshape(-1), count)
    probe_members = probe_order // probes  # flat position -> row
    del assigned, probe_order
    threshold = np.float32(cut)
    firsts: list[IntArray] = []
    seconds: list[IntArray] = []
    for cell in range(count):
        homes = home_order[home_bounds[cell] : home_bounds[cell + 1]]
        members = probe_members[probe_bounds[cell] : probe_bounds[cell + 1]]
        if between is not None:
            between()
        if not len(homes) or len(members) < 2:
            continue
        for r0 in range(0, len(homes), CELL_ROWS):
            rows_at = homes[r0 : r0 + CELL_ROWS]
            rows = np.asarray(vectors[rows_at], dtype=np.float32)
            for c0 in range(0, len(members), CELL_COLS):
                cols_at = members[c0 : c0 + CELL_COLS]
                ii, jj = _hits(rows @ np.asarray(vectors[cols_at], dtype=np.float32).T, threshold)
                a, b = rows_at[ii], cols_at[jj]
                keep = a != b
                a, b = a[keep], b[keep]
                if len(a):
                    firsts.append(np.minimum(a, b))
                    seconds.append(np.maximum(a, b))
    return _unique_sorted(firsts, seconds, n)


@dataclass(frozen=True)
class SampledRecall:
    """An exact check of :func:`cell_pairs` on ``sampled`` rows: of the ``expected`` pairs (found by comparing
    each sampled row with every row) that touch a sampled row, ``found`` were among the pairs checked."""

    sampled: int
    expected: int
    found: int

    @property
    def recall(self) -> float:
        return self.found / self.expected if self.expected else 1.0


def sampled_recall(
    vectors: npt.NDArray[Any],
    cut: float,
    first: IntArray,
    second: IntArray,
    *,
    sample: int,
    seed: int = 1,
    between: Callable[[], object] | None = None,
) -> SampledRecall:
    """Compare ``sample`` seeded random rows with all rows exactly and count how many of their pairs at
    ``>= cut`` are in ``(first, second)``."""
    n = len(vectors)
    if n < 2:
        return SampledRecall(0, 0, 0)
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    known = set(zip(first.tolist(), second.tolist(), strict=True))
    threshold = np.float32(cut)
    expected = found = 0
    for s in range(0, len(picked), 256):
        at = picked[s : s + 256]
        rows = np.asarray(vectors[at], dtype=np.float32)
        hits: list[tuple[int, int]] = []
        for j0 in range(0, n, BLOCK * 4):
            ii, jj = _hits(rows @ np.asarray(vectors[j0 : j0 + BLOCK * 4], dtype=np.float32).T, threshold)
            hits.extend(zip(at[ii].tolist(), (jj + j0).tolist(), strict=True))
        for a, b in hits:
            if a != b:
                expected += 1
                found += (min(a, b), max(a, b)) in known
        if between is not None:
            between()
    return SampledRecall(len(picked), expected, found)
