"""Text shown to people: the one escaping function every message about a file goes through, and aligned rows.

File names may hold newlines, escape sequences or bidi overrides; :func:`printable` keeps all of them from
reaching a terminal or a log raw.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["aligned", "printable"]


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


def aligned(rows: Sequence[tuple[str, str]]) -> str:
    """``key  value`` lines with the values in one column (``clipindex status``)."""
    width = max((len(key) for key, _ in rows), default=0)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)
