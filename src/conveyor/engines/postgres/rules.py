"""The job rules as data: `conveyor.lifecycle` written into the schema at connect.

The SQL functions (`apply_outcomes`, `recover`, `claim_fair`, `exchange` in the first
migration) read the `transitions` and `rules` tables instead of spelling a rule out,
as the Redis engine's scripts read `lifecycle.lua_prelude()`. Every engine writes the
rows of its own Conveyor at connect, under the schema's migration lock; the rows of
one schema are the same for every process that runs the same Conveyor.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from psycopg import AsyncConnection

from ...job import FINISHED_STATES
from ...lifecycle import (
    LEASE_EXPIRED_EVENT,
    LEASE_EXPIRED_MESSAGE,
    LEASE_EXPIRED_TYPE,
    PROMOTE_BATCH,
    RECOVER_BATCH,
    ROTATION_PAGE,
    TRANSITIONS,
    TURN_BUDGET,
)

__all__ = ["RULES", "TRANSITION_ROWS", "install_rules"]

# One row per transition kind, in the `transitions` table's column order.
TRANSITION_ROWS: Final = [
    (
        kind,
        t.state.value,
        t.later_state.value if t.later_state else None,
        t.state in FINISHED_STATES,
        t.later_state in FINISHED_STATES if t.later_state else False,
        t.append_error,
        t.give_back_attempt,
        t.clear_started,
        t.place.value if t.place else None,
        t.event,
        t.store_result,
    )
    for kind, t in TRANSITIONS.items()
]
RULES: Final = {
    "promote_batch": str(PROMOTE_BATCH),
    "recover_batch": str(RECOVER_BATCH),
    "rotation_page": str(ROTATION_PAGE),
    "turn_budget": str(TURN_BUDGET),
    "lease_expired_type": LEASE_EXPIRED_TYPE,
    "lease_expired_message": LEASE_EXPIRED_MESSAGE,
    "lease_expired_event": orjson.dumps(LEASE_EXPIRED_EVENT).decode(),
}


async def install_rules(conn: AsyncConnection[Any], schema: str, schema_sql: str) -> None:
    """Write `TRANSITION_ROWS` and `RULES` into the schema (one transaction, under the
    schema's migration lock); rows that already match are left alone."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"migrate:{schema}",))
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {schema_sql}.transitions VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (kind) DO UPDATE SET state = excluded.state, "
                "later_state = excluded.later_state, finishes = excluded.finishes, "
                "later_finishes = excluded.later_finishes, "
                "append_error = excluded.append_error, "
                "give_back_attempt = excluded.give_back_attempt, "
                "clear_started = excluded.clear_started, place = excluded.place, "
                "event = excluded.event, store_result = excluded.store_result "
                f"WHERE ({schema_sql}.transitions.*) IS DISTINCT FROM (excluded.*)",
                TRANSITION_ROWS,
            )
            await cur.executemany(
                f"INSERT INTO {schema_sql}.rules VALUES (%s, %s) ON CONFLICT (name) "
                f"DO UPDATE SET value = excluded.value "
                f"WHERE {schema_sql}.rules.value IS DISTINCT FROM excluded.value",
                list(RULES.items()),
            )
            await cur.execute(
                f"DELETE FROM {schema_sql}.transitions WHERE NOT kind = ANY(%s)",
                (list(TRANSITIONS),),
            )
