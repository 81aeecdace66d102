"""The model folder's ``manifest.json``, read and checked: what the runtime needs from a converted model.

The folder's layout is :mod:`clipindex.model.model_format`'s contract.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipindex.errors import ModelNotFoundError
from clipindex.model.model_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TEXT_FILE,
    TOKENIZER_FILE,
    VISION_FILE,
    quantized_name,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "TEXT_FILE",
    "TOKENIZER_FILE",
    "VISION_FILE",
    "ModelManifest",
    "missing_manifest_message",
    "quantized_name",
    "reconvert_hint",
]


@dataclass(frozen=True)
class ModelManifest:
    """Typed view of ``manifest.json``."""

    model_dir: Path
    source_model: str
    model_name: str
    embedding_dim: int
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    resize_shortest_edge: int
    resample: str
    crop_height: int
    crop_width: int
    rescale_factor: float
    context_length: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    text_pooling: str
    logit_scale: float
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model_id(self) -> str:
        """The identity stored with a collection: ``<model_name>`` plus dimension is checked on every run."""
        return self.model_name

    def path(self, name: str) -> Path:
        return self.model_dir / name

    def has_int8(self) -> bool:
        return all((self.model_dir / quantized_name(f)).is_file() for f in (VISION_FILE, TEXT_FILE))

    def invalid_value(self) -> str | None:
        """What is wrong with the manifest's values (parsed but impossible), or ``None``."""
        sizes = {
            "embedding_dim": self.embedding_dim,
            "image_size": self.image_size,
            "resize.shortest_edge": self.resize_shortest_edge,
            "crop.height": self.crop_height,
            "crop.width": self.crop_width,
        }
        for key, value in sizes.items():
            if value <= 0:
                return f"{key} is {value}, must be a positive number of pixels or dimensions"
        if self.context_length < 2:
            return f"context_length is {self.context_length}, must be at least 2 (start and end tokens)"
        if not (math.isfinite(self.rescale_factor) and self.rescale_factor > 0):
            return f"rescale_factor is {self.rescale_factor}, must be a positive number"
        if not all(math.isfinite(v) for v in self.image_mean):
            return f"image_mean {list(self.image_mean)} is not finite"
        if not all(math.isfinite(v) and v > 0 for v in self.image_std):
            return f"image_std {list(self.image_std)} must be positive numbers"
        return None

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelManifest:
        model_dir = Path(model_dir)
        manifest_path = model_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ModelNotFoundError(missing_manifest_message(model_dir))
        try:
            raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelNotFoundError(
                f"{manifest_path}: unreadable manifest ({exc}); re-run `clipindex convert --force`"
            ) from exc
        try:
            tokens = raw["special_tokens"]
            manifest = cls(
                model_dir=model_dir,
                source_model=str(raw["source_model"]),
                model_name=str(raw["model_name"]),
                embedding_dim=int(raw["embedding_dim"]),
                image_size=int(raw["image_size"]),
                image_mean=_triple(raw["image_mean"]),
                image_std=_triple(raw["image_std"]),
                resize_shortest_edge=int(raw["resize"]["shortest_edge"]),
                resample=str(raw["resize"]["resample"]),
                crop_height=int(raw["crop"]["height"]),
                crop_width=int(raw["crop"]["width"]),
                rescale_factor=float(raw["rescale_factor"]),
                context_length=int(raw["context_length"]),
                bos_token_id=int(tokens["bos_token_id"]),
                eos_token_id=int(tokens["eos_token_id"]),
                pad_token_id=int(tokens["pad_token_id"]),
                text_pooling=str(raw["text_pooling"]),
                logit_scale=float(raw["logit_scale"]),
                files=dict(raw.get("files", {})),
                raw=raw,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelNotFoundError(
                f"{manifest_path}: manifest is missing or has a bad field ({exc!r}); re-run `clipindex convert --force`"
            ) from exc
        problem = manifest.invalid_value()
        if problem:
            raise ModelNotFoundError(f"{manifest_path}: {problem}; re-run `clipindex convert --force`")
        for name in (VISION_FILE, TEXT_FILE, TOKENIZER_FILE):
            if not (model_dir / name).is_file():
                raise ModelNotFoundError(
                    f"{model_dir / name}: missing from the model folder; re-run `clipindex convert --force`"
                )
        return manifest


def missing_manifest_message(model_dir: Path) -> str:
    """Why ``model_dir`` is no model folder, and the fix that applies (convert refuses a non-empty folder)."""
    if model_dir.is_dir() and any(model_dir.iterdir()):
        return (
            f"{model_dir}: not a converted model folder (it has files but no {MANIFEST_NAME}); pass --model-dir "
            "(or set CLIPINDEX_MODEL_DIR) to a converted model folder, or convert into a new one with "
            "`clipindex convert --output NEW_FOLDER`"
        )
    return (
        f"{model_dir / MANIFEST_NAME}: no model manifest; run `clipindex convert --output {model_dir}` first "
        "(or pass --model-dir / set CLIPINDEX_MODEL_DIR to a converted model folder)"
    )


def reconvert_hint(manifest: ModelManifest, *, int8: bool = False) -> str:
    """A complete command that rewrites ``manifest``'s model folder from its checkpoint (with the int8 files)."""
    import shlex

    quantize = " --quantize int8" if int8 else ""
    source = shlex.quote(manifest.source_model)
    output = shlex.quote(str(manifest.model_dir.absolute()))
    return f"write it with `clipindex convert {source} --output {output}{quantize} --force`"


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return (a, b, c)
