"""One model's preprocessing parameters, shared by decoding (draft sizes) and preprocessing.

:class:`PreprocessConfig` comes from a model's ``manifest.json``; :data:`CLIP_DEFAULT` is OpenAI's.
:class:`DecodeSettings` is what decoding needs of a :class:`~clipindex.images.preprocess.Preprocessor`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from clipindex.images.crop_resize import resample_filter
from clipindex.settings import DEFAULT_DRAFT

__all__ = [
    "CLIP_DEFAULT",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "DecodeSettings",
    "PreprocessConfig",
    "PreprocessRules",
    "resolve_draft",
]


class PreprocessRules(Protocol):
    """The preprocessing fields of a model manifest (:class:`~clipindex.model.manifest.ModelManifest`)."""

    @property
    def resize_shortest_edge(self) -> int: ...
    @property
    def crop_height(self) -> int: ...
    @property
    def crop_width(self) -> int: ...
    @property
    def resample(self) -> str: ...
    @property
    def rescale_factor(self) -> float: ...
    @property
    def image_mean(self) -> tuple[float, float, float]: ...
    @property
    def image_std(self) -> tuple[float, float, float]: ...


OPENAI_CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, slots=True)
class PreprocessConfig:
    """The preprocessing parameters of one model (from its ``manifest.json``)."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_manifest(cls, manifest: PreprocessRules) -> PreprocessConfig:
        config = cls(
            shortest_edge=manifest.resize_shortest_edge,
            crop_height=manifest.crop_height,
            crop_width=manifest.crop_width,
            resample=manifest.resample,
            rescale_factor=manifest.rescale_factor,
            image_mean=manifest.image_mean,
            image_std=manifest.image_std,
        )
        resample_filter(config.resample)  # fail early on a bad manifest
        return config

    @property
    def output_shape(self) -> tuple[int, int, int]:
        """``(3, crop_height, crop_width)``."""
        return (3, self.crop_height, self.crop_width)


#: OpenAI CLIP's preprocessing (all public CLIP checkpoints on the Hugging Face hub use it).
CLIP_DEFAULT = PreprocessConfig()


class DecodeSettings(Protocol):
    """What a file decode needs to know: the model's config (draft sizes), whether to draft, the pixel limit."""

    @property
    def config(self) -> PreprocessConfig: ...
    @property
    def draft(self) -> bool: ...
    @property
    def max_pixels(self) -> int: ...


def resolve_draft(draft: bool | None) -> bool:
    """``draft``, or the default (:data:`~clipindex.settings.DEFAULT_DRAFT`) when ``None``."""
    return DEFAULT_DRAFT if draft is None else bool(draft)
