"""transformers' CLIPModel as the reference for tests (tests only: the runtime never imports torch)."""

from __future__ import annotations

from typing import Any

import numpy as np


def features(output: Any) -> np.ndarray:
    tensor = output if not hasattr(output, "pooler_output") else output.pooler_output
    return np.asarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def image_features(model: Any, processor: Any, images: list[Any]) -> np.ndarray:
    """Normalised ``get_image_features`` of PIL images preprocessed by CLIPImageProcessor(Pil)."""
    import torch

    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return normalise(features(model.get_image_features(pixel_values=pixels)))


def text_features(model: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
    """Normalised ``get_text_features`` of texts tokenized by CLIPTokenizer (padded, truncated at 77)."""
    import torch

    ids = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return normalise(features(model.get_text_features(input_ids=ids)))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(normalise(a.astype(np.float64)) * normalise(b.astype(np.float64)), axis=-1)
