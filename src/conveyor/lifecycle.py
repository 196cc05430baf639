"""The job lifecycle: every job rule, decided once, above storage.

Engines *apply* what this module decides, inside their own atomic step (one SQLite
transaction, one Lua script); they never decide a rule themselves. A rule that needs
the storage's atomicity (is the job still running with this token? is the dedupe key
free right now?) is checked by the engine, but what the check is, what happens when it
passes, and what the error says when it fails are written here once:

* `TRANSITIONS`: outcome -> what happens to the job (target state, error appended or
  not, attempt given back or not, start time cleared, place in line, event emitted).
  The SQLite engine builds its statements from it; the Redis engine templates it into
  its Lua (`lua_prelude`).
* the preconditions of the operator actions (retry, cancel, promote, clean, retry-all)
  with the messages that go with them (`RETRYABLE`, `CANCELLABLE`, ...);
* the shared constants (priority band, rotation page, turn budget, batch sizes).

The rules that used to differ between engines, and what was decided (the README's
"Job contract" section states them for users; the contract suite tests each on every
engine):

1. Operator retry of a job whose dedupe key is now held by another live job is refused
   (`InvalidState` naming the holder); nothing changes. `retry_all` skips such jobs
   and does not count them. Two live jobs never share a dedupe key.
2. A job recovered from an expired lease keeps its place in line: it goes back to
   `pending` at the place it held when it was claimed (ahead of jobs enqueued after it).
3. `clean` removes finished jobs only (completed, failed, cancelled), by finish time.
   Live jobs are cancelled or purged, never cleaned.
4. A worker's `last_seen` is the engine's clock at its last registration.
5. Arguments are validated once, by the app facade (this module's `check_*`
   functions); engines and scripts do not re-validate them.
6. Flows (`FLOW_POLICIES`, `settles`): a parent waits in `waiting-children` until each
   of its children has finished. A child's finish is applied to its parent in the same
   atomic step as the child's own transition: a child that did not complete under
   `fail_parent` fails the parent (whose unfinished descendants are then cancelled);
   otherwise the child is one fewer to wait for, and the last one makes the parent
   `pending` (event `ready`). A parent that leaves the live states any other way
   (operator cancel) cancels its unfinished descendants too. Operator retry of a child
   whose parent failed re-arms the parent (and, up the tree, every failed ancestor):
   it waits again, and its children that failed it or were cancelled come back
   (`comes_back`) at their own due time (scheduled while it is ahead, else pending).
   Operator retry of a failed parent itself re-arms it the same way: it waits again
   while any child is unfinished (pending at once otherwise).
7. A queue declared with `events=False` (`app.limits(queue, events=False)`) has no
   event log: no engine writes any event of its jobs (`enqueued`, `started`, the
   `event` of every transition below, operator actions). Those writes are a third of
   a job's cost on Redis; `job.wait()` polls the job instead (facade/results.py) and
   the live views say the queue is not streamed. `writes_events` is the rule; the Redis
   scripts read it as an event log length of `UNSTREAMED_MAXLEN`.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Literal

import orjson

from .errors import InvalidState, JobNotFound
from .job import ACTIVE_STATES, DEFAULT_MAX_ATTEMPTS, FINISHED_STATES, JobState

__all__ = [
    "CANCELLABLE",
    "CHILD_FAILED_TYPE",
    "CLEANABLE",
    "DEFAULT_FLOW_POLICY",
    "FLOW_POLICIES",
    "FLOW_READY_EVENT",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "PRIORITY_BAND",
    "PROMOTABLE",
    "RETRYABLE",
    "ROTATION_PAGE",
    "TRANSITIONS",
    "TURN_BUDGET",
    "UNSTREAMED_MAXLEN",
    "FlowPolicy",
    "OutcomeKind",
    "Place",
    "Transition",
    "check_clean",
    "check_retry_all",
    "child_failed_error",
    "comes_back",
    "counted_in_results",
    "dedupe_held",
    "fails_parent",
    "lease_expired_error",
    "lua_prelude",
    "not_cancellable",
    "not_found",
    "not_promotable",
    "not_retryable",
    "outcome_event_data",
    "writes_events",
]

OutcomeKind = Literal["complete", "retry", "fail", "release", "defer"]
# What the engine itself does to a running job whose lease expired: `expire` while it
# has attempts left, `expire_last` when its last attempt was the one that was lost.
TransitionKind = Literal["complete", "retry", "fail", "release", "defer", "expire", "expire_last"]

# --- shared constants (imported by the Python engines, templated into the Lua) ---------
MIN_PRIORITY: Final = -100
MAX_PRIORITY: Final = 100
# Pending order is one integer per job: (MAX_PRIORITY - priority) * PRIORITY_BAND + a
# FIFO counter. 201 bands * 2^44 < 2^53, so every score is an exact double in Redis.
PRIORITY_BAND: Final = 1 << 44
# The FIFO counter starts mid-band: jobs enqueued count up from here, jobs put at the
# front of their priority (release on shutdown) count down from it.
PRIORITY_MID: Final = 1 << 43
ROTATION_PAGE: Final = 32  # tenant buckets read per pass of the fair rotation
TURN_BUDGET: Final = 64  # extra bucket turns one claim may spend on tenants at a limit
PROMOTE_BATCH: Final = 1_000  # due scheduled jobs promoted per queue per exchange
RECOVER_BATCH: Final = 1_000  # expired leases recovered per queue per exchange
BULK_BATCH: Final = 1_000  # jobs per atomic step of bulk operator actions
# The event log length a Redis script is given for a queue with no event log (rule 7).
UNSTREAMED_MAXLEN: Final = 0


def writes_events(queue: str, unstreamed: AbstractSet[str]) -> bool:
    """Whether events of `queue`'s jobs are written (rule 7): not for a queue in
    `unstreamed`, the app's queues declared with `events=False`. A partition
    (`mail~3of8`: `~` is never part of a queue name, see partitions.py) follows its
    queue."""
    return queue.partition("~")[0] not in unstreamed


class Place(StrEnum):
    """Where a job that goes back to `pending` stands in its priority's line."""

    FRONT = "front"  # before every job of its priority (release on shutdown)
    BACK = "back"  # after every job of its priority (a retry, a promoted or deferred job)
    KEEP = "keep"  # where it stood when it was claimed (lease expired)


@dataclass(frozen=True, slots=True)
class Transition:
    """What one outcome does to a running job.

    Attributes:
        state: the state the job goes to.
        later_state: the state when the outcome carries a delay (`delay_ms > 0`), or
            None when a delay does not apply.
        append_error: the attempt's error is appended to the job's errors.
        give_back_attempt: the attempt counted at claim is returned (it was not one).
        clear_started: `started_ms` is cleared (the job did not really start).
        place: where the job stands when it goes back to `pending` (None: it does not).
        event: the event kind emitted.
        store_result: the handler's result is stored.
    """

    state: JobState
    later_state: JobState | None
    append_error: bool
    give_back_attempt: bool
    clear_started: bool
    place: Place | None
    event: str
    store_result: bool = False

    @property
    def finishes(self) -> bool:
        """The job leaves the live states: its finish time is set, its dedupe key freed."""
        return self.state in FINISHED_STATES

    def target(self, delay_ms: int) -> JobState:
        """The state the job goes to for an outcome with `delay_ms`."""
        return self.later_state if delay_ms > 0 and self.later_state else self.state


_S = JobState
TRANSITIONS: Final[dict[TransitionKind, Transition]] = {
    "complete": Transition(_S.COMPLETED, None, False, False, False, None, "completed", True),
    "fail": Transition(_S.FAILED, None, True, False, False, None, "failed"),
    "retry": Transition(_S.PENDING, _S.SCHEDULED, True, False, False, Place.BACK, "retried"),
    "release": Transition(_S.PENDING, None, False, True, True, Place.FRONT, "released"),
    "defer": Transition(_S.PENDING, _S.SCHEDULED, False, True, True, Place.BACK, "deferred"),
    "expire": Transition(_S.PENDING, None, False, False, False, Place.KEEP, "stalled"),
    "expire_last": Transition(_S.FAILED, None, True, False, False, None, "failed"),
}

# --- flows --------------------------------------------------------------------------
FlowPolicy = Literal["fail_parent", "ignore", "continue"]
# What a child's failure (failed, or cancelled) does to its waiting parent:
#   fail_parent: the parent fails; its other unfinished descendants are cancelled.
#   ignore: the child counts as finished; the parent runs and sees the failure in
#       `children_results`.
#   continue: the child counts as finished; its failure stays on the child only and is
#       left out of the parent's `children_results`.
FLOW_POLICIES: Final[tuple[FlowPolicy, ...]] = ("fail_parent", "ignore", "continue")
DEFAULT_FLOW_POLICY: Final[FlowPolicy] = "fail_parent"
FLOW_READY_EVENT: Final = "ready"
CHILD_FAILED_TYPE: Final = "ChildFailed"


def fails_parent(state: JobState | str, policy: str) -> bool:
    """Whether a child finishing in `state` under `policy` fails its waiting parent."""
    return JobState(state) is not JobState.COMPLETED and policy == "fail_parent"


def comes_back(state: JobState | str, policy: str) -> bool:
    """Whether a child of a re-armed parent comes back with it (rule 6): one its
    failure cancelled, or one that failed it (a failed `fail_parent` child). A child
    that failed under `ignore` / `continue` was accepted by the parent and stays."""
    state = JobState(state)
    return state is JobState.CANCELLED or (state is JobState.FAILED and policy == "fail_parent")


def counted_in_results(state: JobState | str, policy: str) -> bool:
    """Whether a finished child appears in its parent's `children_results`."""
    return JobState(state) is JobState.COMPLETED or policy == "ignore"


def child_failed_message(child_id: str, state: str) -> str:
    """The error a parent records when a `fail_parent` child did not complete."""
    return (
        f"child {child_id} ended {state} under the fail_parent policy: retry the child "
        "to re-arm this parent"
    )


def child_failed_error(child_id: str, state: str, now_ms: int) -> str:
    """The AttemptError (as JSON) a parent gets when a `fail_parent` child fails."""
    return orjson.dumps(
        {
            "attempt": 0,
            "type": CHILD_FAILED_TYPE,
            "message": child_failed_message(child_id, state),
            "at": now_ms / 1000.0,
        }
    ).decode()


# --- operator actions: from which states, and what the refusal says --------------------
RETRYABLE: Final = (JobState.FAILED, JobState.CANCELLED)
CANCELLABLE: Final = (JobState.SCHEDULED, JobState.PENDING, JobState.RUNNING, JobState.WAITING)
PROMOTABLE: Final = (JobState.SCHEDULED,)
CLEANABLE: Final = FINISHED_STATES


def not_found(job_id: str) -> JobNotFound:
    """The error for a job id that names no job."""
    return JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")


def not_retryable(job_id: str, state: str) -> InvalidState:
    """Retry asked of a job that is not failed or cancelled."""
    return InvalidState(
        f"job {job_id} is {state}; only failed or cancelled jobs can be retried "
        "(use promote for a scheduled job)"
    )


def dedupe_held(job_id: str, key: str, holder: str) -> InvalidState:
    """Retry refused: the job's dedupe key is held by another live job."""
    return InvalidState(
        f"job {job_id} cannot be retried: its dedupe key {key!r} is held by live job "
        f"{holder}; wait for that job to finish, or cancel it, then retry"
    )


def not_cancellable(job_id: str, state: str) -> InvalidState:
    """Cancel asked of a job that has already finished."""
    return InvalidState(
        f"job {job_id} is already {state}; only scheduled, pending, running or "
        "waiting-children jobs can be cancelled"
    )


def not_promotable(job_id: str, state: str) -> InvalidState:
    """Promote asked of a job that is not scheduled."""
    hint = " (use retry for a finished job)" if state in {s.value for s in FINISHED_STATES} else ""
    return InvalidState(
        f"job {job_id} is {state}; only scheduled (delayed) jobs can be promoted{hint}"
    )


def check_clean(state: JobState | str) -> JobState:
    """The state `clean` may remove, or the refusal.

    Raises:
        InvalidState: `state` is live (scheduled, pending, running).
    """
    st = JobState(state)
    if st not in CLEANABLE:
        raise InvalidState(
            f"clean removes finished jobs (completed, failed or cancelled), not {st.value}: "
            "cancel live jobs first, or purge the whole queue"
        )
    return st


def check_retry_all(state: JobState | str) -> JobState:
    """The state `retry_all` may retry, or the refusal.

    Raises:
        InvalidState: `state` is not failed or cancelled.
    """
    st = JobState(state)
    if st not in RETRYABLE:
        raise InvalidState(
            f"retry_all applies to failed or cancelled jobs, not {st.value}: "
            "use promote for scheduled jobs"
        )
    return st


def outcome_event_data(
    kind: TransitionKind, error_json: str | None, reason: str | None, delay_ms: int
) -> dict[str, Any]:
    """The data of the event an outcome records (the Lua's `apply` writes the same):
    the attempt's error message when `TRANSITIONS[kind]` appends the error, the
    reason when one was given (a defer's), the delay when the outcome can be delayed.
    Empty when there is nothing to record."""
    t = TRANSITIONS[kind]
    data: dict[str, Any] = {}
    if t.append_error:
        data["error"] = _error_message(error_json)
    if reason is not None:
        data["reason"] = reason
    if t.later_state is not None:
        data["delay_ms"] = delay_ms
    return data


def _error_message(error_json: str | None) -> str:
    """The message of an AttemptError JSON; "" when unreadable."""
    if not error_json:
        return ""
    try:
        return str(orjson.loads(error_json).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""


LEASE_EXPIRED_EVENT: Final = {"error": "lease expired: worker lost"}
# The AttemptError of `expire_last`: its type, and its message with `{attempt}` to fill
# in (an engine that builds the error in its own language substitutes it there).
LEASE_EXPIRED_TYPE: Final = "LeaseExpired"
LEASE_EXPIRED_MESSAGE: Final = (
    "worker lost while running attempt {attempt} (killed or hung); lease expired"
)


def lease_expired_message(attempt: int) -> str:
    """The message recorded when a job's worker vanished on its last attempt."""
    return LEASE_EXPIRED_MESSAGE.format(attempt=attempt)


def lease_expired_error(attempt: int, now_ms: int) -> str:
    """The AttemptError (as JSON) recorded by `expire_last`."""
    return orjson.dumps(
        {
            "attempt": attempt,
            "type": LEASE_EXPIRED_TYPE,
            "message": lease_expired_message(attempt),
            "at": now_ms / 1000.0,
        }
    ).decode()


def _lua_value(value: object) -> str:
    if value is None:
        return "false"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return orjson.dumps(str(value)).decode()  # a JSON string is a valid Lua string here


def _lua_set(states: tuple[JobState, ...]) -> str:
    return "{ " + ", ".join(f"[{_lua_value(s.value)}] = true" for s in states) + " }"


def lua_prelude() -> str:
    """Lua source that defines this module's constants, transition table and state sets.

    The Redis engine puts it before its script library at load, so the scripts read
    the same numbers and rules as the Python engines (nothing is written twice).
    """
    message = LEASE_EXPIRED_MESSAGE.replace("%", "%%").replace("{attempt}", "%d")
    lines = [
        "-- generated by conveyor.lifecycle.lua_prelude(): do not edit in Lua",
        f"local PRIORITY_BAND = {PRIORITY_BAND}",
        f"local PRIORITY_MID = {PRIORITY_MID}",
        f"local MAX_PRIORITY = {MAX_PRIORITY}",
        f"local ROTATION_PAGE = {ROTATION_PAGE}",
        f"local TURN_BUDGET = {TURN_BUDGET}",
        f"local PROMOTE_BATCH = {PROMOTE_BATCH}",
        f"local RECOVER_BATCH = {RECOVER_BATCH}",
        f"local UNSTREAMED_MAXLEN = '{UNSTREAMED_MAXLEN}'",
        f"local DEFAULT_MAX_ATTEMPTS = {DEFAULT_MAX_ATTEMPTS}",
        f"local LEASE_EXPIRED_EVENT = {_lua_value(orjson.dumps(LEASE_EXPIRED_EVENT).decode())}",
        "local function lease_expired_message(attempt)",
        f"  return string.format({_lua_value(message)}, attempt)",
        "end",
        f"local LIVE = {_lua_set(ACTIVE_STATES)}",
        f"local WAITING = {_lua_value(JobState.WAITING.value)}",
        f"local FLOW_READY_EVENT = {_lua_value(FLOW_READY_EVENT)}",
        f"local CHILD_FAILED_TYPE = {_lua_value(CHILD_FAILED_TYPE)}",
        # fails_parent(state, policy), as Lua (the same test as the Python function)
        "local function fails_parent(state, policy)",
        "  return state ~= 'completed' and policy == 'fail_parent'",
        "end",
        # comes_back(state, policy), as Lua (the same test as the Python function)
        "local function comes_back(state, policy)",
        "  return state == 'cancelled' or (state == 'failed' and policy == 'fail_parent')",
        "end",
        "local function child_failed_message(child, state)",
        f"  return string.format({_lua_value(child_failed_message('%s', '%s'))}, child, state)",
        "end",
        f"local RETRYABLE = {_lua_set(RETRYABLE)}",
        f"local CANCELLABLE = {_lua_set(CANCELLABLE)}",
        f"local PROMOTABLE = {_lua_set(PROMOTABLE)}",
        "local TRANSITIONS = {",
    ]
    for kind, t in TRANSITIONS.items():
        fields = {
            "state": t.state.value,
            "later_state": t.later_state.value if t.later_state else None,
            "append_error": t.append_error,
            "give_back_attempt": t.give_back_attempt,
            "clear_started": t.clear_started,
            "place": t.place.value if t.place else None,
            "event": t.event,
            "store_result": t.store_result,
            "finishes": t.finishes,
        }
        body = ", ".join(f"{k} = {_lua_value(v)}" for k, v in fields.items())
        lines.append(f"  {kind} = {{ {body} }},")
    lines.append("}")
    return "\n".join(lines) + "\n"
