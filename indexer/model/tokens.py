"""Runtime text tokenization with the `tokenizers` library (no transformers needed).

``tokenizer.json`` is the checkpoint's own fast tokenizer saved by ``clipindex convert``. Ids equal
transformers' ``CLIPTokenizer(text, truncation=True, max_length=context_length)``: ``<|startoftext|>``, at most
``context_length - 2`` BPE tokens, ``<|endoftext|>``. Batches are padded to their longest row with the pad id;
the text tower pools at the first end-of-text token, so padding does not change any vector.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models

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


#: the BPE model's settings that ``tokenizers.models.BPE`` takes as keywords
_BPE_KEYWORDS = (
    "unk_token",
    "continuing_subword_prefix",
    "end_of_word_suffix",
    "fuse_unk",
    "byte_fallback",
    "dropout",
    "ignore_merges",
)


def _python_int(text: str) -> int:
    # a Python-level hook: the JSON parser calls back into the interpreter per number, so other threads run
    return int(text)


_MERGES = re.compile(r'"merges"\s*:\s*\[')
_DECODER = json.JSONDecoder()


def _split_merges(text: str) -> tuple[str, list[Any]]:
    """``text`` with the model's merges list emptied, and that list, read one entry per native call."""
    # the model comes last in tokenizer.json: its merges are the last match
    found = max(_MERGES.finditer(text), key=lambda match: match.start(), default=None)
    if found is None:
        return text, []
    entries: list[Any] = []
    at, end = found.end(), len(text)
    while at < end:
        while text[at] in " \t\r\n,":
            at += 1
        if text[at] == "]":
            return text[: found.end()] + text[at:], entries
        entry, at = _DECODER.raw_decode(text, at)
        entries.append(entry)
    raise ValueError("the merges list is not closed")


def load_tokenizer(tokenizer_json: str | Path) -> Tokenizer:
    """``tokenizer.json`` as a :class:`tokenizers.Tokenizer` equal to ``Tokenizer.from_file``'s (same JSON from
    ``to_str()``), without holding the GIL for long: ``from_file`` parses the 49k-token vocabulary and its merges
    in one native call of ~80-100 ms, which stalls every other thread (an event loop awaiting
    :meth:`~clipindex.model.encode.Embedder.aencode_text` among them). Here Python's JSON parser reads the merges
    an entry at a time and the rest with a Python hook per number, and the BPE model is built from what it read:
    the longest native step (the BPE tables) holds the GIL for ~30 ms. A tokenizer that is not BPE is read whole.
    """
    text = Path(tokenizer_json).read_text(encoding="utf-8")
    rest, merges = _split_merges(text)
    data: dict[str, Any] = json.loads(rest, parse_int=_python_int)
    model = data.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or not merges:
        return Tokenizer.from_str(text)
    vocab = model.pop("vocab")
    model.pop("merges")
    pairs: list[tuple[str, str]] = [(a, b) for a, b in (m.split(" ", 1) if isinstance(m, str) else m for m in merges)]
    # the skeleton keeps the added tokens' own ids: they are looked up in the vocabulary it is read with
    skeleton_vocab = {token["content"]: token["id"] for token in data.get("added_tokens") or []}
    tokenizer = Tokenizer.from_str(json.dumps({**data, "model": {**model, "vocab": skeleton_vocab, "merges": []}}))
    tokenizer.model = models.BPE(vocab, pairs, **{k: model[k] for k in _BPE_KEYWORDS if k in model})
    return tokenizer


@dataclass(frozen=True)
class TokenBatch:
    input_ids: np.ndarray  # int64 [batch, sequence]
    truncated: tuple[bool, ...]  # per text: True when it was longer than the context and got cut


class TextTokenizer:
    """CLIP tokenization from ``tokenizer.json``."""

    def __init__(self, tokenizer_json: str | Path, *, context_length: int, pad_token_id: int) -> None:
        try:
            self._tokenizer = load_tokenizer(tokenizer_json)
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
