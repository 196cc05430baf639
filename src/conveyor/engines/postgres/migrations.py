"""Numbered schema migrations of the Postgres engine (the SQLite engine's mechanism).

`migrations/NNNN_name.sql` files are applied in order, each in its own transaction,
and recorded in the schema's `schema_migrations` table. Every transaction first takes
a transaction-level advisory lock named after the schema, so two processes opening
the same schema at once are serialised and the second one finds the work done. A
schema that records a migration newer than this code is refused (`SchemaTooNew`)
and left as it is. Never edit an applied migration; add the next number.
"""

from __future__ import annotations

from typing import Final

from psycopg import AsyncConnection

from ...errors import SchemaTooNew
from ..migration_files import Migration, load_migrations

__all__ = ["MIGRATIONS", "Migration", "migrate"]

MIGRATIONS: Final = load_migrations(__package__, "Postgres")


async def migrate(
    conn: AsyncConnection[tuple[object, ...]], schema: str, schema_sql: str, channel_sql: str
) -> list[int]:
    """Create the schema if needed and apply the missing migrations; returns their numbers.

    Args:
        conn: an autocommit connection (each migration runs in its own transaction).
        schema: the schema's name (for messages and the advisory lock).
        schema_sql: the schema as a quoted identifier.
        channel_sql: the engine's NOTIFY channel as a string literal.

    Raises:
        SchemaTooNew: the schema records migrations newer than this code; nothing changed.
        psycopg.Error: a migration failed (its transaction is rolled back).
    """
    done: list[int] = []
    table = f"{schema_sql}.schema_migrations"
    for migration in MIGRATIONS:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"migrate:{schema}",))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_sql}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur = await conn.execute(f"SELECT version FROM {table}")
            applied = {int(str(row[0])) for row in await cur.fetchall()}
            unknown = sorted(v for v in applied if v > len(MIGRATIONS))
            if unknown:
                raise SchemaTooNew(
                    f"Postgres schema {schema!r} has migrations {unknown}, newer than this "
                    f"Conveyor knows (up to {len(MIGRATIONS):04d}): a newer Conveyor upgraded "
                    "it; upgrade Conveyor on this machine (pip install -U conveyor-jobs), or "
                    "use another ?schema=; the schema was left as it is"
                )
            if migration.number in applied:
                continue
            sql = migration.sql.replace("{schema}", schema_sql).replace("{channel}", channel_sql)
            await conn.execute(sql.encode())
            await conn.execute(
                f"INSERT INTO {table} (version, name) VALUES (%s, %s)",
                (migration.number, migration.name),
            )
            done.append(migration.number)
    return done
