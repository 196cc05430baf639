"""The SQLite engine's SQL, read by name from `queries.sql` (procrastinate style).

The file is read once, at import, with `importlib.resources`; `QUERIES["claim"]` is
the text of the block that starts with ``-- name: claim``. Keeping the SQL in one file
lets a reader (and `EXPLAIN QUERY PLAN`) see every statement the engine runs; the only
statements built in Python are the outcome statements, which `transitions.py` derives
from `conveyor.lifecycle.TRANSITIONS`.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from typing import Final

from ..sql_common import JOB_COLUMNS, parse_queries

__all__ = ["JOB_COLUMNS", "QUERIES", "parse_queries"]

QUERIES: Final[Mapping[str, str]] = parse_queries(
    importlib.resources.files(__package__).joinpath("queries.sql").read_text()
)
