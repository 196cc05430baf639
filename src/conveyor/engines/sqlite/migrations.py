"""Numbered schema migrations of the SQLite engine.

`migrations/NNNN_name.sql` files are applied in order, each in its own
``BEGIN IMMEDIATE`` transaction (so two processes opening the same file at once are
serialised: the second one finds the work done), and recorded in the
`schema_migrations` table. Never edit an applied migration; add the next number.

Files made before this table existed carry only ``PRAGMA user_version`` (1 to 3).
Migration 0001 *is* schema 3, so a version 3 file is recorded as having it (a
baseline: nothing runs, no index is rebuilt on a large file); a version 1 or 2 file
gets 0001 applied, which is written idempotently to upgrade them in place.

``PRAGMA user_version`` is kept at `2 + latest migration` so a Conveyor
that predates the table (it accepted versions up to 3) refuses a file migrated past
0001 instead of using a schema it does not know.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Final

from ...errors import SchemaTooNew
from ..migration_files import Migration, load_migrations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

# Files older than numbered migrations stamped user_version 1..3; 0001 is version 3.
_LEGACY_VERSIONS: Final = 2


MIGRATIONS: Final = load_migrations(__package__, "SQLite")
# What older Conveyors read in PRAGMA user_version (they know 1..3).
SCHEMA_VERSION: Final = _LEGACY_VERSIONS + len(MIGRATIONS)

_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
)


def _applied(conn: sqlite3.Connection) -> set[int]:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not has_table:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations")}


def _refuse_newer(path: Path, applied: set[int], user_version: int) -> None:
    known = len(MIGRATIONS)
    unknown = sorted(v for v in applied if v > known)
    if unknown or (not applied and user_version > SCHEMA_VERSION):
        what = f"migrations {unknown}" if unknown else f"schema version {user_version}"
        raise SchemaTooNew(
            f"SQLite database {path} has {what}, newer than this Conveyor knows "
            f"(migrations up to {known:04d}): a newer Conveyor upgraded it; upgrade "
            "Conveyor on this machine (pip install -U conveyor), or point CONVEYOR_URL "
            "at another file; the file was left as it is"
        )


def migrate(conn: sqlite3.Connection, path: Path) -> list[int]:
    """Bring the database up to the latest migration; returns the numbers applied.

    Raises:
        SchemaTooNew: the file carries migrations (or a user_version) newer than this
            code; nothing is changed.
        sqlite3.Error: a migration failed (its transaction is rolled back).
    """
    applied = _applied(conn)
    user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    _refuse_newer(path, applied, user_version)
    baseline = not applied and user_version == _LEGACY_VERSIONS + 1
    if all(m.number in applied for m in MIGRATIONS):
        return []
    done: list[int] = []
    for migration in MIGRATIONS:
        # One transaction per migration, checked again under the write lock: another
        # process may have applied it while this one waited for the lock.
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_TABLE)
            if migration.number not in _applied(conn):
                if not (baseline and migration.number == 1):
                    for statement in _statements(migration.sql):
                        conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_ms) VALUES (?, ?, ?)",
                    (migration.number, migration.name, int(time.time() * 1000)),
                )
                conn.execute(f"PRAGMA user_version = {_LEGACY_VERSIONS + migration.number}")
                done.append(migration.number)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return done


def _statements(script: str) -> list[str]:
    """Split a migration into statements (a trigger's BEGIN ... END stays whole).

    `executescript` would commit the surrounding transaction first, so each statement
    runs on its own inside the migration's transaction instead.
    """
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        if not pending and (not line.strip() or line.lstrip().startswith("--")):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"unterminated statement in a migration: {pending[:80]!r}")
    return out
