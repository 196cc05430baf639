"""The Postgres engine's SQL, read by name from `queries.sql`.

The file is parsed once, at import, by the reader both SQL engines share
(`conveyor.engines.sql_common.parse_queries`: ``-- name:`` blocks, `{job_columns}`
filled in). `{schema}` is filled in per engine by `for_schema`, since each engine
lives in the schema its URL names. The only statements built in Python are the
outcome statements, which `transitions.py` derives from `conveyor.lifecycle`.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from typing import Final

from ..sql_common import JOB_COLUMNS, parse_queries

__all__ = ["JOB_COLUMNS", "TEMPLATES", "for_schema"]

TEMPLATES: Final[Mapping[str, str]] = parse_queries(
    importlib.resources.files(__package__).joinpath("queries.sql").read_text()
)


def for_schema(schema_sql: str) -> dict[str, str]:
    """Every named query with `{schema}` replaced by the quoted schema name."""
    return {name: sql.replace("{schema}", schema_sql) for name, sql in TEMPLATES.items()}
