"""Runtime text tokenization with the `tokenizers` library (no transformers needed).

``tokenizer.json`` is the checkpoint's own fast tokenizer saved by ``clipindex convert``. Ids equal
transformers' ``CLIPTokenizer(text, truncation=True, max_length=context_length)``: ``<|startoftext|>``, at most
``context_length - 2`` BPE tokens, ``<|endoftext|>``. Batches are padded to their longest row with the pad id;
the text tower pools at the first end-of-text token, so padding does not change any vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from clipindex.errors import ModelNotFoundError


def valid_unicode(text: str) -> str:
    """``text`` without lone surrogates, which the tokenizer refuses: a command-line argument that is not
    UTF-8 (``caf\\xe9`` typed in a Latin-1 terminal) reaches Python as surrogate escapes; each undecodable byte
    becomes U+FFFD, as a UTF-8 decoder with ``errors="replace"`` would make it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # surrogates that are not escaped bytes (from JSON, say)
        return text.encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # int64 [batch, sequence]
    truncated: tuple[bool, ...]  # per text: True when it was longer than the context and got cut


class TextTokenizer:
    """CLIP tokenization from ``tokenizer.json``."""

    def __init__(self, tokenizer_json: str | Path, *, context_length: int, pad_token_id: int) -> None:
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise ModelNotFoundError(
                f"{tokenizer_json}: unreadable tokenizer ({exc}); re-run `clipindex convert --force`"
            ) from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=context_length)
        self.context_length = context_length
        self.pad_token_id = pad_token_id

    def token_ids(self, text: str) -> list[int]:
        """Ids for one text, truncated to the context length, not padded."""
        return list(self._tokenizer.encode(valid_unicode(text)).ids)

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenize ``texts`` into one int64 batch padded to its longest row."""
        encodings = self._tokenizer.encode_batch([valid_unicode(text) for text in texts])
        length = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), max(length, 1)), self.pad_token_id, dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
        return TokenBatch(input_ids=ids, truncated=tuple(bool(e.overflowing) for e in encodings))
