"""The model folder: the contract between conversion (``convert/``) and the runtime (``indexer``).

``clipindex convert`` writes a folder holding exactly::

    vision.onnx        pixel_values float32 [batch, 3, S, S]  ->  image_embeds float32 [batch, D]
    text.onnx          input_ids    int64   [batch, T<=context_length] ->  text_embeds float32 [batch, D]
    tokenizer.json     a `tokenizers` fast tokenizer (the runtime sets truncation and padding:
                       :mod:`indexer.tokens` gives exactly ``CLIPTokenizer``'s ids)
    manifest.json      preprocessing rules, special tokens, pooling, logit scale, sha256 of each file
    vision.int8.onnx, text.int8.onnx   optional, from ``convert --quantize int8``

Embeddings leave the graphs unnormalised (exactly ``get_image_features``/``get_text_features``); the runtime
L2-normalises them. :class:`indexer.manifest.ModelManifest` reads the manifest. ``convert`` imports this module
(and :mod:`indexer.tokens` to verify the tokenizer), nothing else of the runtime; its errors derive from
:class:`ClipIndexError`, defined here, so that the CLI gives them their exit codes.
"""

from __future__ import annotations

from indexer import __version__
from indexer.settings import DEFAULT_MODEL_ID, default_model_dir

__all__ = [
    "DEFAULT_MODEL_ID",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RUNTIME_VERSION",
    "TEXT_FILE",
    "TOKENIZER_FILE",
    "VISION_FILE",
    "ClipIndexError",
    "default_model_dir",
    "quantized_name",
]

MANIFEST_NAME = "manifest.json"
VISION_FILE = "vision.onnx"
TEXT_FILE = "text.onnx"
TOKENIZER_FILE = "tokenizer.json"
FORMAT_VERSION = 1
#: the clipindex version a converter records in the manifest
RUNTIME_VERSION = __version__


class ClipIndexError(Exception):
    """Base class for every error clipindex raises on purpose (``indexer.errors`` and ``convert.errors``)."""

    #: process exit code the CLI uses for this error
    exit_code: int = 1
    #: lines the CLI prints under the one-line message (ways forward), one per line
    hints: tuple[str, ...] = ()


def quantized_name(onnx_file: str) -> str:
    """``vision.onnx`` -> ``vision.int8.onnx``."""
    stem = onnx_file.removesuffix(".onnx")
    return f"{stem}.int8.onnx"
