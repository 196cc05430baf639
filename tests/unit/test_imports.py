"""No import cycles inside `conveyor`: layers point one way (CLI / API / dashboard /
worker -> app facade -> engine protocol -> storage).

The module graph is read from the source with `ast` (nothing is imported), and every
strongly connected component of more than one module is a cycle. Two graphs are checked:

* **Runtime imports**: every import statement that can execute, at module level or
  inside a function (a lazy import still makes the importer depend on the imported
  module). No exception.
* **Runtime plus `if TYPE_CHECKING:` imports**, counted separately. They never execute,
  so they cannot leave a module half-initialised, but they still say which layer knows
  which: a facade that names a web type, or two API modules that each name the other's
  types, are tangled layers even if Python never notices. One edge is exempt, named
  below: `Conveyor.asgi()` imports the web assembly lazily (its one door to FastAPI),
  and the web layer names `Conveyor` in its annotations, as it must; likewise
  `Conveyor.testing()` imports the test harness lazily (its one door to the worker
  runtime, which names `Conveyor` in its annotations).

Importing `a.b.c` also runs the `__init__` of `a.b` (unless the importer is inside
`a.b` already, which is then initialised), so those package edges are counted too:
a cycle through a package `__init__` is a real one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import conveyor

PACKAGE = Path(conveyor.__file__).parent
ROOT = PACKAGE.name
# The lazy imports in `Conveyor.asgi()` and `Conveyor.testing()`; see the docstring.
TYPE_ONLY_EXEMPT = {("conveyor.app", "conveyor.web"), ("conveyor.app", "conveyor.harness")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(
    body: list[ast.stmt], type_only: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in `body` (at any depth), with whether it is type-only."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, type_only
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _imports(node.body, True)
            yield from _imports(node.orelse, type_only)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    yield from _imports([child], type_only)
                elif isinstance(child, ast.ExceptHandler | ast.match_case):
                    yield from _imports(child.body, type_only)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> set[str]:
    """Dotted names the statement imports (modules, or names inside modules)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return {f"{base}.{alias.name}" for alias in node.names} | {base}


def import_graph(*, with_type_only: bool) -> dict[str, set[str]]:
    """module -> the package modules it imports (and the packages that runs)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        own_packages = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 2)}
        tree = ast.parse(path.read_text("utf-8"), str(path))
        for node, type_only in _imports(tree.body):
            if type_only and not with_type_only:
                continue
            for target in _targets(node, name, is_package):
                # `from pkg import name`: `pkg.name` when it is a module, else `pkg`.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    ancestor = ".".join(parts[:i])
                    if ancestor in modules and ancestor not in own_packages:
                        graph[name].add(ancestor)
        if with_type_only:
            graph[name] -= {t for (m, t) in TYPE_ONLY_EXEMPT if m == name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    members = set(component)
    edges = [f"  {m} -> {', '.join(sorted(graph[m] & members))}" for m in component]
    return f"cycle of {len(component)} modules:\n" + "\n".join(edges)


def test_no_import_cycles_at_runtime() -> None:
    graph = import_graph(with_type_only=False)
    found = cycles(graph)
    assert not found, "\n".join(_describe(graph, c) for c in found)


def test_no_import_cycles_counting_type_checking_imports() -> None:
    graph = import_graph(with_type_only=True)
    found = cycles(graph)
    assert not found, "\n".join(_describe(graph, c) for c in found)


def test_the_checker_finds_cycles() -> None:
    """The checker itself: a cycle, a self-contained DAG, and the exempt edge used."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "conveyor.web" in import_graph(with_type_only=False)["conveyor.app"]
    assert "conveyor.app" in import_graph(with_type_only=True)["conveyor.web"]


def test_the_web_layer_is_not_imported_by_the_app_at_module_level() -> None:
    """`import conveyor` (what producers and workers do) loads no FastAPI, and neither
    does the live-events hub (the WebSocket route is the API's, the hub is not)."""
    import subprocess
    import sys

    code = "import sys, conveyor, conveyor.app, conveyor.live; print('fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout.strip() == b"False"
