"""Numbered migration files, shared by the engines that keep a schema (SQLite, Postgres).

Each engine package holds a `migrations/` folder of ``NNNN_name.sql`` files; this module
reads them once, in order, and refuses a gap in the numbering (a missing file would let
an upgrade skip a step). Applying them is the engine's own business (its transaction
rules and version table differ).
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass

__all__ = ["Migration", "load_migrations"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change (the SQL as written in its file)."""

    number: int
    name: str
    sql: str


def load_migrations(package: str, engine: str) -> tuple[Migration, ...]:
    """The migrations in `package`'s ``migrations/`` folder, numbered 1..n.

    Args:
        package: the engine package (its ``__package__``).
        engine: the engine's name, for the error message.

    Raises:
        RuntimeError: the files are not numbered 1..n (a packaging mistake).
    """
    folder = importlib.resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.number)
    if [m.number for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(
            f"{engine} migrations are not numbered 1..n: {[m.number for m in found]}"
        )
    return tuple(found)
