"""`sqlite:///path` — the embedded default engine (durable, no server, one machine)."""

from __future__ import annotations

from .engine import SqliteEngine, parse_sqlite_url

__all__ = ["SqliteEngine", "parse_sqlite_url"]
