"""Comparing embeddings: cosine matrices, CLIP's scaled logits, top-k matches and zero-shot probabilities.

All functions take vectors as ``[N, D]`` arrays (one ``[D]`` vector is a batch of one), normalised or not: they
L2-normalise first, so scores are cosines in [-1, 1] (times ``logit_scale`` when asked).

* :func:`similarity` - ``[len(a), len(b)]`` cosines, or CLIP's logits ``logit_scale * cosine``;
* :func:`top_k` - per query row, the ``k`` best candidate rows, best first (ties: the lower index first). Texts ->
  images is ``top_k(text_vectors, image_vectors, k)``; images -> texts the other way round;
* :func:`zero_shot_probabilities` - ``softmax(logit_scale * cosine)`` over the labels, CLIP's
  ``logits_per_image.softmax(-1)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt


def l2_normalise(vectors: npt.ArrayLike) -> np.ndarray:
    """Rows scaled to unit length (float32); a zero row stays zero."""
    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=-1, keepdims=True)
    return array / np.maximum(norms, np.float32(1e-12))


def _rows(vectors: npt.ArrayLike, what: str) -> np.ndarray:
    array = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if array.ndim != 2:
        raise ValueError(f"{what} must be [N, D] vectors (or one [D] vector), got shape {array.shape}")
    return array


def similarity(a: npt.ArrayLike, b: npt.ArrayLike, *, logit_scale: float | None = None) -> np.ndarray:
    """float32 ``[len(a), len(b)]`` cosine similarities; with ``logit_scale``, multiplied by it (CLIP's logits)."""
    left, right = _rows(a, "a"), _rows(b, "b")
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"a has {left.shape[1]}-dim vectors, b {right.shape[1]}-dim")
    cosines = l2_normalise(left) @ l2_normalise(right).T
    if logit_scale is not None:
        cosines = cosines * np.float32(logit_scale)
    return np.asarray(cosines, dtype=np.float32)


class TopK(NamedTuple):
    """``indices`` int64 ``[queries, k]`` into the candidates and their cosine ``scores`` float32 ``[queries, k]``,
    best first (``k`` is at most the number of candidates)."""

    indices: np.ndarray
    scores: np.ndarray


def top_k(queries: npt.ArrayLike, candidates: npt.ArrayLike, k: int) -> TopK:
    """For each query row, the ``k`` candidate rows with the highest cosine, best first; equal scores keep the
    lower candidate index first. ``k`` larger than the candidates gives them all."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    scores = similarity(queries, candidates)
    count = min(k, scores.shape[1])
    indices = np.empty((scores.shape[0], count), dtype=np.int64)
    if count:
        # the k-th best score of each row in O(n), then only the candidates scoring at least that are sorted
        kth = -np.partition(-scores, count - 1, axis=1)[:, count - 1]
        for row, (values, threshold) in enumerate(zip(scores, kth, strict=True)):
            kept = np.flatnonzero(values >= threshold)
            indices[row] = kept[np.lexsort((kept, -values[kept]))][:count]
    return TopK(indices, np.take_along_axis(scores, indices, axis=1))


def zero_shot_probabilities(
    image_vectors: npt.ArrayLike, text_vectors: npt.ArrayLike, logit_scale: float
) -> npt.NDArray[np.float64]:
    """CLIP's ``logits_per_image.softmax(-1)``: ``softmax(logit_scale * cosine)``, ``[images, labels]``."""
    images = np.atleast_2d(np.asarray(image_vectors, dtype=np.float64))
    texts = np.atleast_2d(np.asarray(text_vectors, dtype=np.float64))
    images = images / np.linalg.norm(images, axis=-1, keepdims=True)
    texts = texts / np.linalg.norm(texts, axis=-1, keepdims=True)
    logits = float(logit_scale) * (images @ texts.T)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    probabilities: npt.NDArray[np.float64] = weights / weights.sum(axis=-1, keepdims=True)
    return probabilities
