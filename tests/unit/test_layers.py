"""The shape of the code, checked from the source: every import (in-function and TYPE_CHECKING ones
counted) points down the layers, and no modules import each other in a circle.

Layers, low to high: ``indices`` < ``prompts`` < ``tools`` < ``agent`` < ``eval`` < ``app``. The
shells (``app``: the command line, the chat loop, the web server, the demo) sit on top, and
nothing imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["indices", "prompts", "tools", "agent", "eval", "app"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an import names (``a.b.c`` may be module ``a.b.c`` or name ``c`` of ``a.b``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its body."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {t for t in (_resolve(x, known) for x in targets) if t and t != mod}
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs
                  if rank[b.split(".")[0]] > rank[a.split(".")[0]])


def test_no_import_points_up_the_layers():
    assert upward(import_graph()) == []


def test_no_import_cycles_lazy_imports_counted():
    assert cycles(import_graph()) == []


def test_nothing_imports_the_shells():
    graph = import_graph()
    assert sorted(a for a, bs in graph.items() if not a.startswith("app") and any(b.startswith("app") for b in bs)) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycle_finder_finds_cycles(graph, expected):
    """The checker itself: a circle is found, a chain is not."""
    assert cycles(graph) == expected


def test_upward_finder_flags_a_low_layer_importing_a_high_one():
    assert upward({"indices.x": {"agent.y"}, "agent.y": {"indices.x"}}) == ["indices.x -> agent.y"]
