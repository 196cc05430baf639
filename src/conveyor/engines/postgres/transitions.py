"""Outcome statements derived from `conveyor.lifecycle.TRANSITIONS` (Postgres dialect).

No rule is written here: each statement's SET clause is read off a `Transition`'s
flags, as the SQLite engine does (`conveyor.engines.sqlite.transitions`). Every
statement is fenced (the job must still be `running` with the caller's token) and
returns (queue, task, tenant, attempt), or no row when the lease was gone.
`Place.BACK` / `Place.FRONT` take a new position from the `job_seq` / `front_seq`
sequences; `Place.KEEP` leaves `seq` as it was at claim, so the job keeps its place.
"""

from __future__ import annotations

from typing import Final

from ...job import FINISHED_STATES, JobState
from ...lifecycle import TRANSITIONS, Place, Transition, TransitionKind

__all__ = ["complete_batch", "statements"]


def _assignments(t: Transition, target: JobState, result: str) -> list[str]:
    sets = [f"state = '{target.value}'", "token = NULL", "lease_until_ms = NULL"]
    if target is JobState.SCHEDULED:
        sets.append("scheduled_ms = %(due)s")
    elif target is JobState.PENDING:
        sets.append("scheduled_ms = NULL")
        if t.place is Place.BACK:
            sets.append("seq = nextval('{schema}.job_seq')")
        elif t.place is Place.FRONT:
            sets.append("seq = nextval('{schema}.front_seq')")
    if target in FINISHED_STATES:
        sets.append("finished_ms = %(now)s")
    if t.append_error:
        sets.append("errors = {schema}.append_error(errors, %(err)s)")
    if t.give_back_attempt:
        sets.append("attempt = greatest(0, attempt - 1)")
    if t.clear_started:
        sets.append("started_ms = NULL")
    if t.store_result:
        sets.append(f"result = {result}")
    return sets


def _build(t: Transition, target: JobState) -> str:
    sets = ", ".join(_assignments(t, target, "%(result)s"))
    return (
        f"UPDATE {{schema}}.jobs SET {sets} WHERE id = %(id)s AND token = %(token)s "
        "AND state = 'running' RETURNING queue, task, tenant, attempt"
    )


# (kind, delayed) -> statement template; `delayed` only differs for kinds with a later_state.
_TEMPLATES: Final[dict[tuple[TransitionKind, bool], str]] = {
    (kind, delayed): _build(t, t.target(1 if delayed else 0))
    for kind, t in TRANSITIONS.items()
    for delayed in (False, True)
}


def statements(schema_sql: str) -> dict[tuple[TransitionKind, bool], str]:
    """The fenced UPDATE of each (outcome kind, delayed) for one schema (parameters:
    %(id)s, %(token)s, %(now)s and, as the flags need them, %(due)s, %(err)s,
    %(result)s)."""
    return {key: sql.replace("{schema}", schema_sql) for key, sql in _TEMPLATES.items()}


def complete_batch(schema_sql: str) -> str:
    """One statement for every completion of an exchange (arrays of ids, tokens and
    results): completions are most outcomes."""
    t = TRANSITIONS["complete"]
    sets = ", ".join(_assignments(t, t.target(0), "o.result"))
    sets = sets.replace("{schema}", schema_sql)
    return (
        f"UPDATE {schema_sql}.jobs SET {sets} "
        "FROM unnest(%(ids)s::text[], %(tokens)s::text[], %(results)s::text[]) "
        "AS o(id, token, result) "
        f"WHERE {schema_sql}.jobs.id = o.id AND {schema_sql}.jobs.token = o.token "
        f"AND {schema_sql}.jobs.state = 'running' "
        f"RETURNING {schema_sql}.jobs.id, queue, task, tenant, attempt"
    )
