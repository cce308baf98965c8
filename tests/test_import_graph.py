"""The module import graph of src/lmgauge: no cycles, and dependencies point down.

DESIGN.md's rule is that data flows one way, CLI/gateway -> library (context, routing, cache,
bench) -> engines -> wire/types/errors, with no import cycles. This reads every module with `ast`
(no import is executed) and collects each `import`/`from ... import` of an lmgauge module,
including the ones inside functions: a lazy import is still a dependency, it only moves the
failure to run time. Imports under `if TYPE_CHECKING:` are left out (annotations only, never run).

`from .pkg import name` counts as an edge to `pkg.name` when that is a module, else to `pkg`.
A module's parent packages are not counted: importing `lmgauge.gateway.core` runs
`lmgauge/gateway/__init__.py` first, but that is Python's package machinery, not a dependency
a reader follows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "lmgauge"

# The bottom of the stack never imports the parts built on it.
LOWER = ("lmgauge.engines", "lmgauge.wire", "lmgauge.types", "lmgauge.errors")
UPPER = ("lmgauge.cli", "lmgauge.gateway", "lmgauge.bench", "lmgauge.context", "lmgauge.routing", "lmgauge.cache")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is it a package's __init__)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        """The module that defines `name` (itself, or the closest enclosing module)."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        package = name if is_package else name.rpartition(".")[0]
        skipped = _type_checking_nodes(tree)
        edges: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "lmgauge")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base) + (f".{node.module}" if node.module else "")
                else:
                    target = node.module or ""
                if target.split(".")[0] != "lmgauge":
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    edges.add(submodule if submodule in modules else owner(target))
        edges.discard(None)
        edges.discard(name)
        graph[name] = {e for e in edges if e is not None}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _under(module: str, roots: tuple[str, ...]) -> bool:
    return any(module == r or module.startswith(r + ".") for r in roots)


def test_the_walk_sees_the_package():
    """The graph is read from the real tree: if the walk found nothing, the tests below could not fail."""
    graph = import_graph()
    assert len(graph) > 50
    assert "lmgauge.gateway.core" in graph["lmgauge.gateway.app"]
    assert "lmgauge.routing.router" in graph["lmgauge.routing.evaluation"]
    assert "lmgauge.types" in graph["lmgauge.engines.base"]


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("lower", LOWER)
def test_the_bottom_of_the_stack_imports_nothing_above_it(lower):
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _under(module, (lower,))
        for target in targets
        if _under(target, UPPER)
    )
    assert not upward, f"{lower} imports upward:\n" + "\n".join(upward)
