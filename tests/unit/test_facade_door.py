"""The `Conveyor` app is the only door to the engine: the API, dashboard, CLI,
scheduler, status, health, live-events hub and dev stack call facade methods, never
engine methods. (The worker runtime keeps a direct handle for its hot path, and the
facade itself is where engine calls belong.)

Read from the source with `ast`: a reach-through is an `.engine` attribute, or the
result of `.connect()` being used (`engine = await app.connect()`, then engine calls).
A bare `await app.connect()` (connect now, to fail fast) is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import conveyor

PACKAGE = Path(conveyor.__file__).parent
# Where engine calls belong: storage itself, the facade, and the worker's hot path.
ALLOWED = ("engines/", "facade/", "worker/")


def reach_throughs(source: str) -> list[str]:
    """`line: code` of every place `source` reaches an engine past the facade."""
    tree = ast.parse(source)
    bare_connects = {
        id(stmt.value.value)
        for stmt in ast.walk(tree)
        if isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Await)
        and isinstance(stmt.value.value, ast.Call)
    }
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "engine") or (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and id(node) not in bare_connects
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_nothing_above_the_facade_reaches_the_engine() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(ALLOWED):
            continue
        found = reach_throughs(path.read_text("utf-8"))
        if found:
            offenders[rel] = found
    assert not offenders, f"engine reached past the app facade: {offenders}"


def test_the_check_sees_a_reach_through() -> None:
    assert reach_throughs("async def f(app):\n    await app.connect()\n") == []
    assert reach_throughs("async def f(app):\n    e = await app.connect()\n") == [
        "2: app.connect()"
    ]
    assert reach_throughs("def f(app):\n    return app.engine.durable\n") == ["2: app.engine"]
