"""What the two SQL engines (SQLite and Postgres) share above their drivers.

Both keep jobs in one table with one row layout (`JOB_COLUMNS`), read their SQL by
name from a ``queries.sql``, list jobs in the same keyset pages and log events as the
same rows. So the conversions between values and rows, the listing pages and their
cursors, the refusals of the operator actions and the batch loops of the bulk ones
are written here once, and each engine keeps only what really differs: its driver
(sqlite3 in a thread, psycopg async), its SQL text, and how it runs a transaction
(`SqliteCore._write`, `PgCore._run`, passed in as a callable where a loop needs one).

Nothing here knows a driver, and the engines import it, never the reverse. The job
rules themselves stay in `conveyor.lifecycle`; this module only applies them to rows.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import orjson

from ..job import Job, JobState, NewJob, decode_lenient
from ..lifecycle import (
    BULK_BATCH,
    CANCELLABLE,
    MAX_PRIORITY,
    PROMOTABLE,
    RETRYABLE,
    not_cancellable,
    not_promotable,
    not_retryable,
)
from .values import Event, JobPage, QueueCounts

__all__ = [
    "COUNTED_STATES",
    "JOB_COLUMNS",
    "MAX_KEY",
    "MIN_KEY",
    "RETRIED_BY_OPERATOR",
    "bound_after",
    "cursor_for",
    "delete_in_batches",
    "event_of",
    "job_page",
    "new_job_row",
    "page_start",
    "parse_cursor",
    "parse_queries",
    "queue_counts",
    "read_positions",
    "refuse_unless",
    "retry_all_pages",
    "tally_minutes",
]

# --- the job row ------------------------------------------------------------------------

# The job row layout every query that returns jobs uses (`{job_columns}` in the files).
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


def new_job_row(
    new: NewJob, now_ms: int, *, waits: bool = False
) -> tuple[JobState, tuple[Any, ...]]:
    """The state a new job starts in, and its first columns as the insert statements
    take them (id through scheduled_ms: each engine appends what else its insert has).

    A flow parent (`waits`) starts waiting for its children; any other job is
    scheduled while its due time is ahead of `now_ms`, else pending.
    """
    due = new.run_at_ms if new.run_at_ms is not None else now_ms + new.delay_ms
    if waits:
        state = JobState.WAITING
    elif due > now_ms:
        state = JobState.SCHEDULED
    else:
        state = JobState.PENDING
    return state, (
        new.id, new.queue, new.task, new.payload_json, state.value, new.max_attempts,
        new.priority, new.tenant, new.dedupe_key,
        None if new.timeout is None else int(new.timeout * 1000), new.backoff_json,
        now_ms, due if state is JobState.SCHEDULED else None,
    )  # fmt: skip


# --- listings -----------------------------------------------------------------------------

MIN_KEY: Final = -(1 << 63)  # a keyset bound below every (time, rowid)
MAX_KEY: Final = (1 << 63) - 1  # a keyset bound above every (time, rowid)


def parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    """The keyset position a cursor of `cursor_for` names (None: the first page).

    Raises:
        ValueError: not a cursor this engine handed out.
    """
    if not cursor:
        return None
    try:
        a, b = cursor.split(":")
        return int(a), int(b)
    except ValueError:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass back the cursor of the previous page unchanged"
        ) from None


def cursor_for(state: JobState, row: Sequence[Any]) -> str:
    """The keyset position after `row` (fields as in JOB_COLUMNS, then rowid)."""
    rowid = row[len(JOB_COLUMNS)]
    if state is JobState.PENDING:
        return f"{row[7]}:{row[22]}"  # priority, seq
    if state is JobState.SCHEDULED:
        return f"{row[13]}:{rowid}"  # scheduled_ms
    if state in (JobState.RUNNING, JobState.WAITING):
        return f"{row[12]}:{rowid}"  # created_ms
    return f"{row[15]}:{rowid}"  # finished_ms


def page_start(state: JobState, key: tuple[int, int] | None) -> tuple[int, int]:
    """The keyset position a page of `state` starts after: `key`, or before the first
    job in listing order (pending: highest priority first, then seq; scheduled:
    soonest due first; the others: newest first)."""
    if key is not None:
        return key
    if state is JobState.PENDING:
        return MAX_PRIORITY + 1, 0
    if state is JobState.SCHEDULED:
        return MIN_KEY, MIN_KEY
    return MAX_KEY, MAX_KEY


def job_page(
    state: JobState,
    rows: Sequence[Sequence[Any]],
    limit: int,
    fields: Callable[[Sequence[Any]], dict[str, Any]],
) -> JobPage:
    """A page from up to `limit` + 1 listing rows (one more than the page tells whether
    there is a next one); `fields` maps a row to the job's fields."""
    page = rows[:limit]
    jobs: list[Job] = [decode_lenient(fields(r)) for r in page]
    return JobPage(jobs, cursor_for(state, page[-1]) if len(rows) > limit and page else None)


# --- counts and throughput -----------------------------------------------------------------

COUNTED_STATES: Final = frozenset(s.value for s in JobState)


def queue_counts(
    queue: str,
    depths: Iterable[tuple[str, int]],
    *,
    paused: bool,
    oldest_pending_ms: int | None,
    finished_1m: Mapping[str, int],
) -> QueueCounts:
    """The counts of `queue` from what the engine read: (state, depth) rows (states
    that are not a JobState are ignored), the paused flag, the oldest pending job's
    age and the completed / failed counts of the last minute."""
    counts = QueueCounts(
        queue=queue,
        paused=paused,
        oldest_pending_ms=oldest_pending_ms,
        completed_1m=finished_1m.get("completed", 0),
        failed_1m=finished_1m.get("failed", 0),
    )
    for state, n in depths:
        if state in COUNTED_STATES:
            counts.set_state(state, int(n))
    return counts


def tally_minutes(buckets: list[int], rows: Iterable[Sequence[Any]]) -> None:
    """Add (minutes back from the end, count) rows to per-minute `buckets` (oldest
    first). A finish stamped after the end (another process's clock) counts as now."""
    last = len(buckets) - 1
    for back, n in rows:
        buckets[last - max(0, int(back))] += int(n)


# --- events -----------------------------------------------------------------------------


async def read_positions(
    queues: Sequence[str],
    since: Mapping[str, str] | None,
    last_event_ids: Callable[[Sequence[str]], Awaitable[dict[str, str]]],
) -> dict[str, str]:
    """Where a reader of `queues` starts: after the event id `since` names for a queue,
    and at "now" (the engine's `last_event_ids`) for a queue it does not name."""
    positions = dict(since or {})
    missing = [q for q in queues if q not in positions]
    if missing:
        positions.update(await last_event_ids(missing))
    return positions


def event_of(row: Sequence[Any]) -> Event:
    """An `Event` from a stored event row (id, queue, kind, job_id, task, tenant,
    attempt, at_ms, data); data that is not a JSON object is kept under "value" (or
    "raw" when it is not JSON at all)."""
    event_id, queue, kind, job_id, task, tenant, attempt, at_ms, data = row
    payload: dict[str, Any] = {}
    if data:
        try:
            decoded = orjson.loads(data)
            payload = decoded if isinstance(decoded, dict) else {"value": decoded}
        except orjson.JSONDecodeError:
            payload = {"raw": data}
    return Event(
        id=str(event_id),
        kind=kind,
        job_id=job_id,
        queue=queue,
        at=at_ms / 1000.0,
        task=task,
        tenant=tenant,
        attempt=attempt,
        data=payload,
    )


# --- operator actions -------------------------------------------------------------------

RETRIED_BY_OPERATOR: Final = orjson.dumps({"retried_by": "operator"}).decode()

_ACCEPTS: Final = {
    "retry": ({s.value for s in RETRYABLE}, not_retryable),
    "cancel": ({s.value for s in CANCELLABLE}, not_cancellable),
    "promote": ({s.value for s in PROMOTABLE}, not_promotable),
}


def refuse_unless(action: Literal["retry", "cancel", "promote"], job: Mapping[str, Any]) -> None:
    """Raise the lifecycle's refusal (`InvalidState`) when the stored `job`'s state does
    not accept `action`; it runs inside the transaction that then changes the job."""
    accepted, refusal = _ACCEPTS[action]
    if job["state"] not in accepted:
        raise refusal(str(job["id"]), str(job["state"]))


Bound = tuple[int, int]


async def retry_all_pages(
    retry_page: Callable[[Bound], Awaitable[tuple[int, Bound | None]]],
    woke: Callable[[], None],
) -> int:
    """Drive `retry_all` page by page, newest finish first, each page its own short
    transaction, so workers are not locked out while a large dead-letter backlog is
    re-queued; returns how many jobs were retried.

    Args:
        retry_page: retries the (up to `BULK_BATCH`) jobs below a keyset bound
            (finished_ms, rowid) in one transaction; returns how many it retried and
            the bound after its last row, or None when there was no row.
        woke: called after a page that retried jobs (idle workers must hear of them).
    """
    bound: Bound = (MAX_KEY, MAX_KEY)
    total = 0
    while True:
        done, next_bound = await retry_page(bound)
        total += done
        if done:
            woke()
        if next_bound is None:
            return total
        bound = next_bound


def bound_after(rows: Sequence[Sequence[Any]]) -> Bound:
    """The keyset bound after the last row of a `retry_all_page` (job columns, then
    rowid): its (finished_ms, rowid)."""
    last = rows[-1]
    return int(last[15]), int(last[-1])


async def delete_in_batches(delete: Callable[[], Awaitable[int]]) -> int:
    """Run `delete` (one transaction that deletes up to `BULK_BATCH` rows and returns
    how many) until a batch comes back short; returns how many were deleted."""
    total = 0
    while True:
        deleted = await delete()
        total += deleted
        if deleted < BULK_BATCH:
            return total
