"""The pair search behind ``clipindex duplicates`` (:mod:`clipindex.ops.pairs`) on real arrays: the cell index
finds what the exact all-pairs pass finds, on clustered CLIP-like vectors with a shared direction (where a few hub
cells draw most probes unless the offsets even them out) and on isotropic ones, and its sampled check counts right."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from clipindex.ops.pairs import assign_cells, cell_pairs, default_probes, exact_pairs, sampled_recall


def unit(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def planted(vectors: npt.NDArray[np.float32], seed: int) -> npt.NDArray[np.float32]:
    """Every 50th row a near-copy of the row before it (cosine about 0.989-0.999)."""
    rng = np.random.default_rng(seed)
    out = vectors.copy()
    dim = out.shape[1]
    for k in range(49, len(out), 50):
        noisy = out[k - 1] + rng.uniform(0.05, 0.15) * rng.standard_normal(dim).astype(np.float32) / np.sqrt(dim)
        out[k] = noisy / np.linalg.norm(noisy)
    return out


def clustered(n: int, seed: int = 3) -> npt.NDArray[np.float32]:
    """million.py's recipe: topics over a shared offset (different photos at cosine ~0.3-0.55, as CLIP's)."""
    rng = np.random.default_rng(seed)
    shared = unit(rng.standard_normal((1, 512)).astype(np.float32))
    centres = unit(unit(rng.standard_normal((n // 50, 512)).astype(np.float32)) + 1.2 * shared)
    noise = rng.standard_normal((n, 512)).astype(np.float32) / np.sqrt(512)
    return planted(unit(centres[rng.integers(0, len(centres), n)] + 0.9 * noise), seed)


def isotropic(n: int, seed: int = 4) -> npt.NDArray[np.float32]:
    return planted(unit(np.random.default_rng(seed).standard_normal((n, 512)).astype(np.float32)), seed)


def pairs(found: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]) -> set[tuple[int, int]]:
    return set(zip(found[0].tolist(), found[1].tolist(), strict=True))


@pytest.mark.parametrize("make", [clustered, isotropic], ids=["clustered", "isotropic"])
@pytest.mark.parametrize("cut", [0.988, 0.95])
def test_cells_find_the_exact_pairs(make: Callable[[int], npt.NDArray[np.float32]], cut: float) -> None:
    vectors = make(20_000).astype(np.float16)
    exact = pairs(exact_pairs(vectors, cut))
    found = pairs(cell_pairs(vectors, cut, cells=64))
    assert len(exact) >= 390  # the planted pairs (400) at least, less the few planted below the cut
    assert found <= exact  # nothing the exact pass would not find ...
    assert len(found) >= 0.995 * len(exact)  # ... and (almost) all of it
    first, second = exact_pairs(vectors, cut)
    assert np.all(first < second) and np.array_equal(np.lexsort((second, first)), np.arange(len(first)))


def test_offsets_even_out_the_cells_of_clustered_vectors() -> None:
    vectors = clustered(40_000).astype(np.float16)
    cells, probes = 100, default_probes(0.99)
    assigned = assign_cells(vectors, 0.99, cells=cells, probes=probes)
    assert assigned.shape == (40_000, probes) and assigned.max() < cells
    assert all(len(set(row)) == probes for row in assigned[:1000].tolist())  # distinct cells, the home first
    homes = np.bincount(assigned[:, 0], minlength=cells)
    probing = np.bincount(assigned.reshape(-1), minlength=cells)
    work = float(homes @ probing)
    even = 40_000 * 40_000 * probes / cells
    assert work <= 1.5 * even, work / even  # the work of an even split, within 50 %
    assert homes.max() <= 6 * 40_000 / cells


def test_sampled_recall_counts_pairs_found_and_missed() -> None:
    vectors = isotropic(5_000)
    first, second = exact_pairs(vectors, 0.988)
    check = sampled_recall(vectors, 0.988, first, second, sample=5_000)  # every row: the exact pairs, twice
    assert check.sampled == 5_000 and check.expected == 2 * len(first) and check.recall == 1.0
    half = sampled_recall(vectors, 0.988, first[::2], second[::2], sample=5_000)
    assert half.found == 2 * len(first[::2]) and half.recall < 0.6
    assert sampled_recall(vectors[:1], 0.9, first[:0], second[:0], sample=10).expected == 0


def test_default_probes_grow_as_the_threshold_falls() -> None:
    assert [default_probes(c) for c in (0.999, 0.99, 0.98, 0.96, 0.92, 0.5)] == [8, 8, 8, 16, 32, 64]
