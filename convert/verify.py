"""Prove an exported model folder against PyTorch before anything is written where the user asked.

The converter runs transformers' ``CLIPModel`` and ONNX Runtime on the same inputs and refuses (``ParityError``)
when any embedding pair has cosine < ``MIN_COSINE`` or, L2-normalised, differs by more than ``MAX_ABS_DIFF``:

- images: real photos shipped in ``convert/probe_images`` (from scikit-image / scikit-learn's sample data),
  preprocessed by the checkpoint's own ``CLIPImageProcessor``, at batch size 1 and at batch size >= 11;
- texts: short, long (past the 77-token context), unicode and empty strings, tokenized by the checkpoint's
  ``CLIPTokenizer``, once unpadded one by one (batch 1) and once padded to the context length in one batch;
- the runtime tokenizer (``tokenizer.json`` through the ``tokenizers`` library, configured like
  :mod:`clipindex.model.tokens`) must give exactly ``CLIPTokenizer``'s ids on every probe text.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from clipindex.convert.errors import ParityError

MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4

PROBE_TEXTS: tuple[str, ...] = (
    "a photo of a cat",
    "a red car",
    "",
    "An astronaut in a white suit in front of the American flag, photographed indoors with studio lighting, "
    "with a long description that keeps going well past the seventy-seven token context window of CLIP's text "
    "encoder so that truncation is exercised, and then some more words about rockets, coffee and a cat.",
    "Ein Hund läuft über die Straße 🐕",
    "日本語のテキスト、東京の夜景",
    "  multiple   spaces\tand\nnewlines  ",
    "UPPER CASE AND MiXeD CaSe",
    "numbers 12345 and punctuation!!! ??? ...",
    "café naïve résumé — em dash “quotes”",
    "a",
    "<|endoftext|> special tokens as text <|startoftext|>",
)


def probe_images() -> list[Any]:
    """The real photos shipped with the converter, as RGB PIL images."""
    from PIL import Image

    folder = resources.files("clipindex.convert") / "probe_images"
    images = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".jpg"):
            with entry.open("rb") as fh, Image.open(fh) as img:
                images.append(img.convert("RGB"))
    return images


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine and max abs difference (of L2-normalised vectors, and raw) between two [N, D] arrays."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ParityError(f"shape mismatch: reference {ref.shape} vs ONNX {cand.shape}")
    if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
        return {"min_cosine": float("nan"), "max_abs_diff": float("nan"), "max_abs_diff_raw": float("nan")}
    ref_n, cand_n = _normalise(ref), _normalise(cand)
    cosines = np.sum(ref_n * cand_n, axis=-1)
    return {
        "min_cosine": float(cosines.min()),
        "max_abs_diff": float(np.abs(ref_n - cand_n).max()),
        "max_abs_diff_raw": float(np.abs(ref - cand).max()),
    }


def check(figures: dict[str, float], what: str) -> None:
    """Raise ParityError when ``figures`` break the thresholds (NaN always does)."""
    cosine, diff = figures["min_cosine"], figures["max_abs_diff"]
    if math.isnan(cosine) or math.isnan(diff) or cosine < MIN_COSINE or diff > MAX_ABS_DIFF:
        raise ParityError(
            f"{what}: ONNX output diverges from PyTorch (min cosine {cosine:.7f} < {MIN_COSINE} or max abs diff "
            f"{diff:.2e} > {MAX_ABS_DIFF:.0e}); the checkpoint or the export is broken, nothing was written"
        )


def _features(output: Any) -> np.ndarray:
    """transformers 4 returns a tensor from get_*_features, transformers 5 an output whose pooler is projected."""
    tensor = output if not hasattr(output, "pooler_output") else output.pooler_output
    return np.asarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_tokenizer(hf_tokenizer: Any, tokenizer_json: Path, context_length: int) -> int:
    """Check that the runtime tokenizer gives ``hf_tokenizer``'s ids on the probe texts; return how many."""
    from clipindex.model.tokens import TextTokenizer

    runtime = TextTokenizer(tokenizer_json, context_length=context_length, pad_token_id=0)
    for text in PROBE_TEXTS:
        expected = hf_tokenizer(text, truncation=True, max_length=context_length)["input_ids"]
        got = runtime.token_ids(text)
        if list(got) != list(expected):
            raise ParityError(
                f"tokenizer.json gives {got[:12]}... for {text[:40]!r}, CLIPTokenizer gives {expected[:12]}...; "
                "nothing was written"
            )
    return len(PROBE_TEXTS)


def verify_towers(
    model: Any,
    image_processor: Any,
    hf_tokenizer: Any,
    model_dir: Path,
    *,
    context_length: int,
    vision_file: str = "vision.onnx",
    text_file: str = "text.onnx",
    enforce: bool = True,
) -> dict[str, Any]:
    """Run PyTorch and ONNX Runtime side by side; return the parity figures, raising ParityError if ``enforce``."""
    import torch

    images = probe_images()
    # A batch of >= 11: the photos, their mirror images and one crop each.
    batch_images = images + [img.transpose(0) for img in images]
    batch_images += [img.crop((0, 0, max(1, img.width // 2), img.height)) for img in images]
    pixel_values = np.asarray(image_processor(images=batch_images, return_tensors="np")["pixel_values"], np.float32)

    vision = _session(model_dir / vision_file)
    text = _session(model_dir / text_file)
    figures: dict[str, Any] = {"thresholds": {"min_cosine": MIN_COSINE, "max_abs_diff": MAX_ABS_DIFF}}
    with torch.no_grad():
        ref_images = _features(model.get_image_features(pixel_values=torch.from_numpy(pixel_values)))
        onnx_b1 = vision.run(None, {"pixel_values": pixel_values[:1]})[0]
        onnx_bn = vision.run(None, {"pixel_values": pixel_values})[0]
        figures["vision_batch_1"] = compare(ref_images[:1], onnx_b1)
        figures["vision_batch_n"] = {**compare(ref_images, onnx_bn), "batch_size": len(pixel_values)}

        padded = hf_tokenizer(
            list(PROBE_TEXTS),
            truncation=True,
            max_length=context_length,
            padding="max_length",
            return_tensors="np",
        )["input_ids"].astype(np.int64)
        ref_text = _features(model.get_text_features(input_ids=torch.from_numpy(padded)))
        onnx_padded = text.run(None, {"input_ids": padded})[0]
        unpadded_rows = []
        for sentence in PROBE_TEXTS:
            ids = np.asarray(
                [hf_tokenizer(sentence, truncation=True, max_length=context_length)["input_ids"]], np.int64
            )
            unpadded_rows.append(text.run(None, {"input_ids": ids})[0][0])
        onnx_unpadded = np.stack(unpadded_rows)
        figures["text_batch_1_unpadded"] = compare(ref_text, onnx_unpadded)
        figures["text_batch_n_padded"] = {**compare(ref_text, onnx_padded), "batch_size": len(PROBE_TEXTS)}
    if enforce:
        for key in ("vision_batch_1", "vision_batch_n", "text_batch_1_unpadded", "text_batch_n_padded"):
            check(figures[key], f"{key} ({model_dir.name})")
    return figures


def int8_agreement(model_dir: Path, fp32_file: str, int8_file: str, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Cosine of an int8 model against its fp32 original on the same inputs."""
    ref = _session(model_dir / fp32_file).run(None, inputs)[0]
    got = _session(model_dir / int8_file).run(None, inputs)[0]
    figures = compare(ref, got)
    cosines = np.sum(_normalise(ref.astype(np.float64)) * _normalise(got.astype(np.float64)), axis=-1)
    return {"min_cosine": figures["min_cosine"], "mean_cosine": float(cosines.mean())}
