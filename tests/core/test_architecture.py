"""Architecture invariants, checked on the source: no import circles between molgym's modules, counting imports
inside functions too (only ``if TYPE_CHECKING:`` blocks are left out), so a lazy import cannot hide one."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Installed package name -> folder of the repository (pyproject's package-dir).
ROOTS = {"molgym": REPO / "molgym", "molgym.envs": REPO / "envs", "molgym.agents": REPO / "agents"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph() -> dict[str, set[str]]:
    """Module -> the molgym modules it imports anywhere in its source (its own parent packages left out)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_only(tree)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != module and not module.startswith(found + ".") and found != "molgym":
                    graph[module].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    graph = import_graph()
    assert len(graph) > 80 and "molgym.envs.base" in graph["molgym.envs.vector"]  # the walk sees the tree
    assert cycles(graph) == [], "import circles (each list imports itself through the others)"


def test_the_core_never_imports_envs_or_agents():
    """Imports flow agents -> envs -> core: the core reaches environments and agents only by registered names
    (``"module:Class"`` strings: generators, environments, CLI groups), never by an import, lazy or not."""
    rooms = ("molgym.envs", "molgym.agents")
    graph = import_graph()
    core = [m for m in graph if not m.startswith(rooms)]
    assert "molgym.benchmark.runner" in core and "molgym.cli.generate" in core
    reaching = {m: sorted(t for t in graph[m] if t.startswith(rooms)) for m in core}
    assert {m: t for m, t in reaching.items() if t} == {}
    envs = [m for m in graph if m.startswith("molgym.envs")]
    assert {m: sorted(t for t in graph[m] if t.startswith("molgym.agents")) for m in envs
            if any(t.startswith("molgym.agents") for t in graph[m])} == {}
