"""`postgresql://` — the Postgres engine (psycopg 3 async, SKIP LOCKED, LISTEN/NOTIFY)."""

from __future__ import annotations

from .engine import PostgresEngine, parse_postgres_url

__all__ = ["PostgresEngine", "parse_postgres_url"]
