"""The SQLite engine's SQL, read by name from `queries.sql` (procrastinate style).

The file is read once, at import, with `importlib.resources`; `QUERIES["claim"]` is
the text of the block that starts with ``-- name: claim``. Keeping the SQL in one file
lets a reader (and `EXPLAIN QUERY PLAN`) see every statement the engine runs; the only
statements built in Python are the outcome statements, which `transitions.py` derives
from `conveyor.lifecycle.TRANSITIONS`.
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["JOB_COLUMNS", "QUERIES", "parse_queries"]

# The job row layout every query that returns jobs uses (`{job_columns}` in the file).
JOB_COLUMNS: Final = (
    "id", "queue", "task", "payload", "state", "attempt", "max_attempts", "priority",
    "tenant", "dedupe_key", "timeout_ms", "backoff", "created_ms", "scheduled_ms",
    "started_ms", "finished_ms", "progress", "result", "errors", "token", "worker",
    "lease_until_ms", "seq",
)  # fmt: skip

_NAME = re.compile(r"^-- name: ([a-z0-9_]+)\s*$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """Split a named-query file into {name: SQL} (comment lines and the trailing ``;``
    dropped, `{job_columns}` filled in).

    Raises:
        ValueError: a name is used twice, or a block holds no statement.
    """
    out: dict[str, str] = {}
    marks = list(_NAME.finditer(text))
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        body = text[mark.end() : following.start() if following else len(text)]
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
        sql = "\n".join(lines).strip().rstrip(";").strip()
        name = mark.group(1)
        if name in out or not sql:
            raise ValueError(f"queries.sql: query {name!r} is repeated or empty")
        out[name] = sql.replace("{job_columns}", ", ".join(JOB_COLUMNS))
    return out


QUERIES: Final[Mapping[str, str]] = parse_queries(
    importlib.resources.files(__package__).joinpath("queries.sql").read_text()
)
