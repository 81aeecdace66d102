"""The model folder: the contract between conversion (:mod:`clipindex.convert`) and the runtime.

``clipindex convert`` writes a folder holding exactly::

    vision.onnx        pixel_values float32 [batch, 3, S, S]  ->  image_embeds float32 [batch, D]
    text.onnx          input_ids    int64   [batch, T<=context_length] ->  text_embeds float32 [batch, D]
    tokenizer.json     a `tokenizers` fast tokenizer (the runtime sets truncation and padding:
                       :mod:`clipindex.model.tokens` gives exactly ``CLIPTokenizer``'s ids)
    manifest.json      preprocessing rules, special tokens, pooling, logit scale, sha256 of each file
    vision.int8.onnx, text.int8.onnx   optional, from ``convert --quantize int8``

Embeddings leave the graphs unnormalised (exactly ``get_image_features``/``get_text_features``); the runtime
L2-normalises them. :class:`clipindex.model.manifest.ModelManifest` reads the manifest. The converter imports this
module, :mod:`clipindex.model.tokens` (to verify the tokenizer) and :mod:`clipindex.errors`, nothing else of the
runtime.
"""

from __future__ import annotations

from clipindex.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RUNTIME_VERSION",
    "TEXT_FILE",
    "TOKENIZER_FILE",
    "VISION_FILE",
    "quantized_name",
]

MANIFEST_NAME = "manifest.json"
VISION_FILE = "vision.onnx"
TEXT_FILE = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
#: the clipindex version a converter records in the manifest
RUNTIME_VERSION = __version__


def quantized_name(onnx_file: str) -> str:
    """``vision.onnx`` -> ``vision.int8.onnx``."""
    stem = onnx_file.removesuffix(".onnx")
    return f"{stem}.int8.onnx"
