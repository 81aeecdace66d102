"""Terminal output: escaping, the tables the commands print, JSON, and progress.

Everything a command prints about files goes through :func:`printable`: file names may hold newlines, escape
sequences or bidi overrides, and none of them reach the terminal raw.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from indexer.search import Classification, SearchResult


def printable(text: str) -> str:
    """``text`` safe for a terminal: control and other non-printable characters as ``\\x``/``\\u`` escapes.

    File names may hold newlines, escape sequences or bidi overrides; none of them reach the terminal raw.
    """
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def format_results(results: Sequence[SearchResult]) -> str:
    """The readable table ``clipindex search`` prints: rank, score, path (one line per hit)."""
    lines = [f"{'rank':>4}  {'score':>6}  path"]
    lines += [f"{r.rank:>4}  {r.score:6.4f}  {printable(r.path)}" for r in results]
    return "\n".join(lines)


def format_classifications(results: Sequence[Classification]) -> str:
    """What ``clipindex classify`` prints: per image its path, then one ``probability  label`` line per label."""
    blocks: list[str] = []
    for result in results:
        lines = [printable(result.image)]
        lines += [f"  {s.probability:7.2%}  {printable(s.label)}" for s in result.labels]
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def aligned(rows: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines with the values in one column (``clipindex status``)."""
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def json_document(value: Any) -> str:
    """``value`` as indented JSON: one array or object for a whole command's output."""
    return json.dumps(value, indent=2)


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (a run's summary object)."""
    return json.dumps(value)


class Progress(Protocol):
    """What a long run (ingest, migrate) reports its progress to."""

    def start(self, total: int) -> None:
        """The number of items to process, once known: ingest calls it after the first ``advance`` calls when
        its walk outlasts the first batches."""

    def advance(self, count: int) -> None: ...
    def close(self) -> None: ...


class TqdmProgress:
    """:class:`Progress` as a tqdm bar on stderr, when ``enabled`` (the CLI: stderr is a terminal, not --quiet)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.done = 0  # advanced before start(): ingest embeds while its walk still counts the files

    def start(self, total: int) -> None:
        if self.enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=self.done, unit="img", file=sys.stderr, dynamic_ncols=True, desc="embedding"
            )

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
