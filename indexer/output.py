"""Terminal output: escaping, the tables the commands print, and JSON.

Everything a command prints about files goes through :func:`printable`: file names may hold newlines, escape
sequences or bidi overrides, and none of them reach the terminal raw.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
