"""Outcome statements derived from `conveyor.lifecycle.TRANSITIONS`.

No rule is written here: each statement's SET clause is read off a `Transition`'s
flags (target state, error appended, attempt given back, start cleared, place in line,
result stored, finished). The SQLite engine only decides *how* to write a flag:

* every statement is fenced: it changes the job only while it is still `running`
  with the caller's lease token, and returns (queue, task, tenant, attempt) or no row;
* `Place.BACK` / `Place.FRONT` take a new FIFO position in :seq (reserved by the
  caller from the `meta` counters); `Place.KEEP` leaves `seq` as it was at claim, so
  the job stands where it stood.
"""

from __future__ import annotations

from typing import Final

from ...job import FINISHED_STATES, JobState
from ...lifecycle import TRANSITIONS, Place, Transition, TransitionKind

__all__ = ["COMPLETE_BATCH", "STATEMENTS", "statement"]

# Appends the AttemptError JSON in :err to the errors array. json_valid() guards
# against a corrupted column: json_insert would raise on it and wedge every exchange
# that touches the job.
_APPEND_ERROR = (
    "json_insert(CASE WHEN json_valid(errors) THEN errors ELSE '[]' END, '$[#]', json(:err))"
)


def _assignments(t: Transition, target: JobState, result: str) -> list[str]:
    sets = [f"state = '{target.value}'", "token = NULL", "lease_until_ms = NULL"]
    if target is JobState.SCHEDULED:
        sets.append("scheduled_ms = :due")
    elif target is JobState.PENDING:
        sets.append("scheduled_ms = NULL")
        if t.place is not Place.KEEP:
            sets.append("seq = :seq")
    if target in FINISHED_STATES:
        sets.append("finished_ms = :now")
    if t.append_error:
        sets.append(f"errors = CASE WHEN :err IS NULL THEN errors ELSE {_APPEND_ERROR} END")
    if t.give_back_attempt:
        sets.append("attempt = max(0, attempt - 1)")
    if t.clear_started:
        sets.append("started_ms = NULL")
    if t.store_result:
        sets.append(f"result = {result}")
    return sets


def _build(t: Transition, target: JobState) -> str:
    sets = ", ".join(_assignments(t, target, ":result"))
    return (
        f"UPDATE jobs SET {sets} WHERE id = :id AND token = :token AND state = 'running' "
        "RETURNING queue, task, tenant, attempt"
    )


# (kind, delayed) -> statement; `delayed` only differs for kinds with a later_state.
STATEMENTS: Final[dict[tuple[TransitionKind, bool], str]] = {
    (kind, delayed): _build(t, t.target(1 if delayed else 0))
    for kind, t in TRANSITIONS.items()
    for delayed in (False, True)
}


def statement(kind: TransitionKind, delay_ms: int) -> str:
    """The fenced UPDATE for one outcome of `kind` (parameters: :id, :token, :now,
    and as its flags need them :due, :seq, :err, :result)."""
    return STATEMENTS[(kind, delay_ms > 0)]


def _complete_batch() -> str:
    # Completions are most outcomes: one statement over a JSON array of
    # [job_id, token, result_json] triples costs about half of one UPDATE per job.
    t = TRANSITIONS["complete"]
    sets = ", ".join(_assignments(t, t.target(0), "o.result"))
    return (
        f"UPDATE jobs SET {sets} FROM (SELECT json_extract(value, '$[0]') AS id, "
        "json_extract(value, '$[1]') AS token, json_extract(value, '$[2]') AS result "
        "FROM json_each(:batch)) AS o "
        "WHERE jobs.id = o.id AND jobs.token = o.token AND jobs.state = 'running' "
        "RETURNING jobs.id, jobs.queue, jobs.task, jobs.tenant, jobs.attempt"
    )


COMPLETE_BATCH: Final = _complete_batch()
