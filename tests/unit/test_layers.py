"""The shape of the code, checked from the source: every import (in-function and TYPE_CHECKING ones
counted) points down the layers, and no modules import each other in a circle.

Layers, low to high: ``core`` (errors, registry, files) < ``geo`` (countries, places, distances) <
``indices`` < ``prompts`` < ``tools`` < ``agent`` < ``eval`` < the Python API (the modules of the
``geoguide/`` folder itself) < ``app``. The shells (``app``: the command line, the chat loop, the
web server, the demo) sit on top, and nothing imports them. Every folder is a subpackage of the one
import name ``geoguide`` (pyproject's package-dir), and every import spells it so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["core", "geo", "indices", "prompts", "tools", "agent", "eval", "geoguide", "app"]
# The root package (the API's lazy façade) and ``python -m geoguide`` sit above every layer.
ENTRY_POINTS = {"geoguide", "geoguide.__main__"}
OLD_NAMES = {"core", "geo", "indices", "prompts", "tools", "agent", "eval", "app"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] != "geoguide":
        parts.insert(0, "geoguide")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    """``geoguide.agent.graph`` -> ``agent``; the root package's own modules -> ``geoguide``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in OLD_NAMES else "geoguide"


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for layer in LAYERS for p in sorted((REPO / layer).rglob("*.py"))}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.append(node.module)
    return names


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
        if mod in ENTRY_POINTS:
            continue
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
    return sorted(f"{a} -> {b}" for a, bs in graph.items() for b in bs if rank[_layer(b)] > rank[_layer(a)])


def test_no_import_points_up_the_layers():
    assert upward(import_graph()) == []


def test_no_import_cycles_lazy_imports_counted():
    assert cycles(import_graph()) == []


def test_nothing_imports_the_shells():
    graph = import_graph()
    assert sorted(a for a, bs in graph.items()
                  if _layer(a) != "app" and any(_layer(b) == "app" for b in bs)) == []


def test_every_import_spells_the_one_import_name():
    """No module, test or benchmark imports a bare ``agent``, ``indices``, ... (the names a wheel
    does not install): the code runs the same from a checkout and from site-packages."""
    files = [p for folder in [*LAYERS, "tests", "benchmarks"] for p in sorted((REPO / folder).rglob("*.py"))
             if "fixtures" not in p.parts]
    bare = sorted(f"{p.relative_to(REPO)}: {name}" for p in files for name in _imports(p)
                  if name.split(".")[0] in OLD_NAMES)
    assert bare == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycle_finder_finds_cycles(graph, expected):
    """The checker itself: a circle is found, a chain is not."""
    assert cycles(graph) == expected


def test_upward_finder_flags_a_low_layer_importing_a_high_one():
    assert upward({"geoguide.indices.x": {"geoguide.agent.y"}, "geoguide.agent.y": {"geoguide.indices.x"}}) == [
        "geoguide.indices.x -> geoguide.agent.y"]
    assert upward({"geoguide.core.x": {"geoguide.geo.y"}}) == ["geoguide.core.x -> geoguide.geo.y"]
