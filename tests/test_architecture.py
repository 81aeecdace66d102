"""The package's shape: one import name, no import cycles, and rooms that import only rooms below them.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a cycle that only a type hint or a
lazy import hides is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: the source folders and the package names they install as (pyproject's package-dir)
SOURCES = {"clipindex": ROOT / "indexer", "clipindex.convert": ROOT / "convert"}

#: rooms, lowest first; a module may import its own room and the rooms below it, never one above
RANKS = {
    "core": 0,
    "clipindex.images": 1,
    "clipindex.store": 1,
    "clipindex.model": 2,
    "clipindex.convert": 3,
    "clipindex.ingest": 4,
    "clipindex.ops": 5,
    "clipindex.web": 6,
    "clipindex.cli": 7,
}


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The clipindex modules ``name`` imports (a ``from pkg import sub`` names the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            if target.split(".")[0] == "clipindex" and target in known and target != name:
                out.add(target)
    return out


def room(module: str) -> str:
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return "core"


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = grey
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if colour.get(nxt) == grey:
                return [*stack[stack.index(nxt) :], nxt]
            if colour.get(nxt) == white and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = black
        return None

    for node in sorted(edges):
        if colour[node] == white and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read() -> None:
    edges = graph()
    assert len(edges) > 40
    assert "clipindex.model.encode" in edges["clipindex.ops.search"]
    assert "clipindex.errors" in edges["clipindex.convert.errors"]


def test_no_import_cycles() -> None:
    edges = graph()
    # the package roots re-export (clipindex's are lazy); nothing below may import a root back
    for name, targets in edges.items():
        parents = {target for target in targets if name.startswith(target + ".")}
        assert not parents, f"{name} imports its own package {parents}: import the module that defines the name"
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_rooms_never_import_higher_ones() -> None:
    bad = []
    for name, targets in graph().items():
        if name in ("clipindex", "clipindex.__main__"):
            continue  # the root's lazy library API and ``python -m clipindex`` sit above every room
        for target in targets:
            if target == "clipindex":
                bad.append(f"{name} -> clipindex (the root)")
            elif RANKS[room(target)] > RANKS[room(name)]:
                bad.append(f"{name} ({room(name)}) -> {target} ({room(target)})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("edges", "cyclic"),
    [({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True), ({"a": {"b"}, "b": {"c"}, "c": set()}, False)],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], cyclic: bool) -> None:
    assert (find_cycle(edges) is not None) is cyclic
