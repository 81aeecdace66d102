"""Terminal output of the commands: result tables and JSON (escaping is :func:`clipindex.display.printable`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from clipindex.display import printable

if TYPE_CHECKING:
    from clipindex.model.classify import Classification
    from clipindex.ops.results import SearchResult


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


def json_document(value: Any) -> str:
    """``value`` as indented JSON: one array or object for a whole command's output."""
    return json.dumps(value, indent=2)


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (a run's summary object)."""
    return json.dumps(value)
