"""Query arithmetic: ``clipindex search "golden retriever" + ./pool.jpg - fruit``, rclip's syntax.

A query is a list of :class:`QueryTerm`, each a text or an image file with a sign and a weight. Its vector is

    v = Σ wᵢ·e(tᵢ) over the ``+`` terms  −  Σ wⱼ·e(tⱼ) over the ``-`` terms,   then  v / ‖v‖

where ``e`` is the model's L2-normalised embedding (text tower for texts, vision tower for images, decoded and
preprocessed exactly as ingest does) and ``w`` a term's weight (1 unless it is written ``N:term``). Search then
ranks stored images by cosine with ``v``, as for one query; a single term gives the plain query's vector.

:func:`parse_terms` reads the command line's words:

* ``+`` and ``-`` (words of their own) join terms; the first term is positive, and words between two
  operators form one term, joined by spaces (``a red car`` unquoted is one text).
* ``N:`` in front of a term weights it (``2:golden retriever``, ``0.5:./pool.jpg``); ``N`` is a positive number.
* A term is an image file when it names a path: it holds a ``/`` (``./pool.jpg``, ``~/x.png``) or ends with an
  image file's extension (``pool.jpg``). Such a file must exist; a missing one is an error naming it.
* ``text:`` forces a text (``text:+`` searches for the literal ``+``; ``text:pool.jpg`` for those words), and
  ``image:`` forces a file.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from clipindex.errors import ImageError
from clipindex.images.formats import AVIF_EXTENSIONS, BASE_EXTENSIONS, HEIF_EXTENSIONS, RAW_EXTENSIONS

if TYPE_CHECKING:
    import numpy as np

__all__ = ["QueryTerm", "combine_terms", "parse_terms"]

_IMAGE_EXTENSIONS = BASE_EXTENSIONS | HEIF_EXTENSIONS | AVIF_EXTENSIONS | RAW_EXTENSIONS
_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+):(.+)$", re.S)


@dataclass(frozen=True)
class QueryTerm:
    """One term: a text or an image file, added (``sign`` +1) or subtracted (-1), with a positive weight."""

    kind: Literal["text", "image"]
    value: str
    weight: float = 1.0
    sign: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise ValueError(f"a query term is a text or an image, not {self.kind!r}")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"a term's weight must be a positive number, not {self.weight}")
        if self.sign not in (1, -1):
            raise ValueError("a term's sign is +1 or -1")
        if self.kind == "text" and not self.value.strip():
            raise ValueError("a text term is empty")


def _looks_like_file(text: str) -> bool:
    if "/" in text or text.startswith("~") or (os.sep != "/" and os.sep in text):
        return True
    suffix = Path(text).suffix.lower().lstrip(".")
    return suffix in _IMAGE_EXTENSIONS and " " not in text.strip()


def _term(words: list[str], sign: int) -> QueryTerm:
    text = " ".join(words)
    weight = 1.0
    found = _WEIGHT.match(text)
    if found:
        weight, text = float(found.group(1)), found.group(2)
    if text.startswith("text:"):
        return QueryTerm("text", text[len("text:") :], weight, sign)
    forced = text.startswith("image:")
    if forced:
        text = text[len("image:") :]
    if forced or _looks_like_file(text):
        path = os.path.expanduser(text)
        if not os.path.isfile(path):
            what = "is not a file" if os.path.exists(path) else "no such file"
            raise ImageError(text, f"{what} (a query term naming a path must be an image file; write text:{text} "
                             "to search for these words)")  # fmt: skip
        return QueryTerm("image", path, weight, sign)
    return QueryTerm("text", text, weight, sign)


def parse_terms(words: Sequence[str]) -> list[QueryTerm]:
    """The terms of a command line's query words (module doc); ValueError on a dangling or doubled operator."""
    terms: list[QueryTerm] = []
    current: list[str] = []
    sign = 1
    for word in words:
        if word in ("+", "-"):
            if not current:
                raise ValueError(f"{word!r} needs a term on both sides (write text:{word} to search for it)")
            terms.append(_term(current, sign))
            current, sign = [], (1 if word == "+" else -1)
        else:
            current.append(word)
    if not current:
        raise ValueError("the query ends with an operator; give a term after it" if terms else "the query is empty")
    terms.append(_term(current, sign))
    return terms


def combine_terms(vectors: Sequence[np.ndarray], terms: Sequence[QueryTerm]) -> np.ndarray:
    """The query vector of the module doc, from each term's normalised embedding; ValueError when it is zero
    (the terms cancel out)."""
    import numpy as np

    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float64))
    for vector, term in zip(vectors, terms, strict=True):
        total += term.sign * term.weight * np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(total))
    if not norm > 1e-9:
        raise ValueError("the query's terms cancel out (their weighted sum is zero): change a weight or a term")
    return (total / norm).astype(np.float32)
