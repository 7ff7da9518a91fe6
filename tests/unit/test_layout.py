"""The package's shape: no import cycle among ``awm`` modules and no catch-all module names.

Imports are read from the source with ``ast`` (function-level and relative ones included), so a
lazy import that only hides a cycle from the interpreter still counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import awm

ROOT = Path(awm.__file__).parent
CATCH_ALL = {"utils.py", "helpers.py", "common.py", "misc.py"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _targets(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``awm`` modules that module ``name`` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    edges = set()
    for target in found:
        while target and target not in modules:  # `import awm.a.b.c` of a name -> nearest module
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _targets(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def test_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "awm"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from awm.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom .c import X\n")
    (pkg / "sub" / "c.py").write_text("X = 1\n")
    modules = {"awm.a": pkg / "a.py", "awm.sub": pkg / "sub" / "__init__.py",
               "awm.sub.b": pkg / "sub" / "b.py", "awm.sub.c": pkg / "sub" / "c.py"}
    graph = {n: _targets(n, p, modules) for n, p in modules.items()}
    assert graph["awm.a"] == {"awm.sub.b"}
    assert graph["awm.sub.b"] == {"awm.a", "awm.sub.c"}
    assert cycles(graph) == [["awm.a", "awm.sub.b", "awm.a"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles among awm modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_catch_all_module_names():
    bad = sorted(str(p.relative_to(ROOT.parent)) for p in ROOT.rglob("*.py") if p.name in CATCH_ALL)
    assert not bad, f"modules named by no content (name them by what they hold): {bad}"
