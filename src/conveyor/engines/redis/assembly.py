"""How each Lua script is put together: the operation's code plus only the shared
definitions it uses.

Redis runs a script's whole text on every call, so every `local function` and constant
table of the shared prelude (`lifecycle.lua_prelude()`, `_clock.lua`, `_lib.lua`,
`_pickup.lua`) is built again per call whether the operation needs it or not. Prepended
whole, that cost 12-15 us of Redis CPU per call (a third of a single enqueue; see
bench/RESULTS.md, "Leaner scripts"). So the shared text is cut into its top-level
definitions, and a script gets the ones its code names, with what those name in turn,
in their original order (Lua needs a local defined before the code that refers to it).

The shared files keep one convention, which `definitions` checks: at the top level they
hold only `local function NAME(...)` ... `end` (the `end` alone at column 0), `local`
statements (a multi-line table ends where its brackets balance), `NAME = function(...)`
... `end` for a local declared earlier (both go wherever NAME is needed), and comments.
Any other top-level statement is kept in every script, since what it does cannot be
told from a name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION = re.compile(r"local\s+function\s+([A-Za-z_][A-Za-z0-9_]*)")
# `NAME = function(...)` closed by `end` at column 0: the body of a local declared
# earlier (`local a, b` first, so functions can call each other before both exist).
_ASSIGNED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*function\b")
_LOCALS = re.compile(r"local\s+([A-Za-z_][A-Za-z0-9_,\s]*?)\s*(=|$)")
# Lua comments and strings, so a name in either neither defines nor needs anything
# (a long comment `--[[ ]]` first, then line comments, then quoted strings).
_NOISE = re.compile(r"--\[\[.*?\]\]|--[^\n]*|'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\"", re.S)


@dataclass(frozen=True, slots=True)
class Definition:
    """One top-level statement of the shared text.

    Attributes:
        text: its source, with the comment lines just above it.
        defines: the local names it introduces (empty: kept in every script).
        uses: the names it mentions outside comments and strings.
    """

    text: str
    defines: frozenset[str]
    uses: frozenset[str]


def names_used(code: str) -> frozenset[str]:
    """Every identifier in `code` outside comments and strings."""
    return frozenset(_NAME.findall(_NOISE.sub(" ", code)))


def _depth(line: str) -> int:
    code = _NOISE.sub(" ", line)
    return sum(code.count(c) for c in "({[") - sum(code.count(c) for c in ")}]")


def definitions(shared: str, source: str = "shared Lua") -> list[Definition]:
    """The top-level definitions of `shared`, in order.

    Raises:
        ConfigError: a `local function` has no `end` at column 0, or a statement's
            brackets never balance (the file breaks the convention above).
    """
    lines = shared.split("\n")
    out: list[Definition] = []
    comments: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("--"):
            comments.append(line)
            i += 1
            continue
        start = i
        function = _FUNCTION.match(line) or _ASSIGNED.match(line)
        if function:
            while i < len(lines) and lines[i] != "end":
                i += 1
            if i == len(lines):
                raise ConfigError(
                    f"{source}: function {function.group(1)} has no `end` at "
                    "column 0; shared Lua definitions must close at the line start"
                )
            defines = frozenset({function.group(1)})
        else:
            depth = _depth(line)
            while depth > 0 and i + 1 < len(lines):
                i += 1
                depth += _depth(lines[i])
            if depth > 0:
                raise ConfigError(f"{source}: the statement at line {start + 1} never closes")
            local = _LOCALS.match(line)
            defines = (
                frozenset(n.strip() for n in local.group(1).split(",")) if local else frozenset()
            )
        body = "\n".join(lines[start : i + 1])
        # What the statement itself names, less what it defines (a recursive function
        # does not need itself from elsewhere).
        out.append(Definition("\n".join([*comments, body]), defines, names_used(body) - defines))
        comments = []
        i += 1
    return out


def assemble(shared: Sequence[Definition], code: str) -> str:
    """`code` preceded by the definitions of `shared` it needs, directly or through
    another definition, in their original order."""
    by_name: dict[str, list[Definition]] = {}
    for d in shared:
        for name in d.defines:
            by_name.setdefault(name, []).append(d)  # a declaration, then its body
    needed: set[int] = set()
    todo = [names_used(code), *(d.uses for d in shared if not d.defines)]
    while todo:
        for name in todo.pop():
            for d in by_name.get(name, ()):
                if id(d) not in needed:
                    needed.add(id(d))
                    todo.append(d.uses)
    kept = [d.text for d in shared if not d.defines or id(d) in needed]
    return "\n".join([*kept, code])
