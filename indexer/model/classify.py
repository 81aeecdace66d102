"""Zero-shot classification, no store involved: the library API behind ``clipindex classify``.

Probabilities are CLIP's: ``softmax(logit_scale * cosine(image, label_text))`` over the labels, with
``logit_scale`` (already exponentiated, 100 for the OpenAI checkpoints) from the model's manifest. Images are
decoded and preprocessed as ingest does, by the encoder given (an :class:`~clipindex.model.encode.Embedder`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from clipindex.errors import ImageError
from clipindex.images.inputs import ImageInput, as_items, describe
from clipindex.model.similarity import similarity, zero_shot_probabilities
from clipindex.settings import DEFAULT_BATCH_SIZE

__all__ = ["Classification", "ImageTextEncoder", "LabelScore", "classify", "label_texts", "parse_labels"]


class EncodedOutcome(Protocol):
    """One image's outcome: its L2-normalised vector, or the error that stopped it."""

    @property
    def vector(self) -> npt.NDArray[np.float32] | None: ...

    @property
    def error(self) -> ImageError | None: ...


class ImageTextEncoder(Protocol):
    """What :func:`classify` needs of an encoder (an :class:`~clipindex.model.encode.Embedder`)."""

    @property
    def logit_scale(self) -> float: ...

    def encode_text(self, texts: str | Sequence[str]) -> npt.NDArray[np.float32]: ...

    def encode_images_detailed(
        self, images: ImageInput | Iterable[ImageInput], *, batch_size: int = ...
    ) -> Sequence[EncodedOutcome]: ...


@dataclass(frozen=True)
class LabelScore:
    """One label's zero-shot probability (softmax over the labels) and raw cosine similarity."""

    label: str
    probability: float
    similarity: float


@dataclass(frozen=True)
class Classification:
    """The labels of one image, most probable first."""

    image: str
    labels: tuple[LabelScore, ...]

    @property
    def best(self) -> LabelScore:
        return self.labels[0]

    def as_json(self) -> dict[str, Any]:
        """What ``clipindex classify --json`` prints for this image."""
        return {
            "image": self.image,
            "labels": [
                {"label": s.label, "probability": s.probability, "similarity": s.similarity} for s in self.labels
            ],
        }


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """``"cat, dog,a red car"`` (or several such strings) -> ``["cat", "dog", "a red car"]``.

    Labels are split on commas and stripped; empty ones are dropped. Raises ValueError for fewer than
    one label or a label given twice.
    """
    parts = [labels] if isinstance(labels, str) else list(labels)
    out = [label.strip() for part in parts for label in part.split(",")]
    out = [label for label in out if label]
    if not out:
        raise ValueError("no labels given (e.g. --labels 'cat,dog,a red car')")
    seen: set[str] = set()
    for label in out:
        if label in seen:
            raise ValueError(f"label {label!r} is given twice")
        seen.add(label)
    return out


def label_texts(labels: Sequence[str], template: str | None) -> list[str]:
    """The texts the text tower sees: the labels as given, or ``template`` with ``{}`` replaced by each."""
    if template is None:
        return list(labels)
    if "{}" not in template:
        raise ValueError(f"template {template!r} has no '{{}}' for the label (e.g. 'a photo of {{}}')")
    return [template.replace("{}", label) for label in labels]


def classify(
    embedder: ImageTextEncoder,
    images: ImageInput | Iterable[ImageInput],
    labels: str | Sequence[str],
    *,
    template: str | None = None,
    on_error: Callable[[ImageError], None] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Classification]:
    """Zero-shot labels for each image: probabilities from a softmax over ``labels``, most probable first.

    ``labels``: a list, or a comma-separated string (:func:`parse_labels`). ``template``: e.g.
    ``"a photo of {}"``; by default the labels are encoded as given. ``images``: any inputs
    :meth:`Embedder.encode_images` takes, decoded and preprocessed as ingest does, on its decode-ahead threads.
    A result's ``image`` is the path or URL given, ``<image N>`` for a PIL image, else a description of the
    item. An image that cannot be decoded raises :class:`~clipindex.errors.ImageError`, or, with ``on_error``, is
    reported there and left out of the result.
    """
    names = parse_labels(labels)
    texts = embedder.encode_text(label_texts(names, template))
    items = as_items(images)
    outcomes = embedder.encode_images_detailed(items, batch_size=batch_size)
    results: list[Classification] = []
    kept: list[str] = []
    vectors: list[np.ndarray] = []
    for index, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
        if outcome.error is not None:
            if on_error is None:
                raise outcome.error
            on_error(outcome.error)
            continue
        assert outcome.vector is not None
        kept.append(f"<image {index}>" if isinstance(item, Image.Image) else describe(item, index))
        vectors.append(outcome.vector)
    if not vectors:
        return results
    similarities = similarity(np.stack(vectors), texts)
    probabilities = zero_shot_probabilities(np.stack(vectors), texts, embedder.logit_scale)
    for name, probs, sims in zip(kept, probabilities, similarities, strict=True):
        order = sorted(range(len(names)), key=lambda i: (-probs[i], i))
        scores = tuple(LabelScore(names[i], float(probs[i]), float(sims[i])) for i in order)
        results.append(Classification(image=name, labels=scores))
    return results
