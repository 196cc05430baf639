"""The read model on SQLite: jobs, counts, listings, the event log and throughput.

Every query is an index search (see the migrations' index design): depth per state is
kept by triggers, finished-job counts are ranges on the finished index, listings are
keyset pages (one index range per page, whatever the queue holds).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from ...job import Job, JobState, decode_job, decode_lenient
from ...lifecycle import MAX_PRIORITY
from ..values import Event, JobPage, QueueCounts, Throughput
from .connection import Q, SqliteCore
from .queries import JOB_COLUMNS

_MIN_KEY = -(1 << 63)
_MAX_KEY = (1 << 63) - 1
_COUNTED = {s.value for s in JobState}


class SqliteReadModel(SqliteCore):
    """What the CLI, API and dashboard read."""

    async def get_job(self, job_id: str) -> Job:
        """Raises `JobNotFound` if there is no such job, `MalformedJob` if undecodable."""
        return decode_job(await self._call(lambda conn: self._load(conn, job_id)))

    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""
        rows = await self._call(lambda conn: conn.execute(Q["queue_names"]).fetchall())
        return [str(r[0]) for r in rows]

    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state (O(1), trigger-maintained), paused flag, age of the oldest
        pending job and completions/failures in the last minute (index lookups)."""

        def read(conn: sqlite3.Connection) -> QueueCounts:
            counts = QueueCounts(queue=queue)
            for state, n in conn.execute(Q["queue_counts"], (queue,)):
                if state in _COUNTED:
                    counts.set_state(state, int(n))
            paused = conn.execute(Q["queue_paused"], (queue,)).fetchone()
            counts.paused = bool(paused and paused[0])
            oldest = conn.execute(Q["oldest_pending"], (queue,)).fetchone()[0]
            counts.oldest_pending_ms = None if oldest is None else int(oldest)
            since = self.clock.now_ms() - 60_000
            for state in ("completed", "failed"):
                n = conn.execute(Q["finished_since"], (queue, state, since)).fetchone()[0]
                setattr(counts, f"{state}_1m", int(n))
            return counts

        return await self._call(read)

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in one state: pending in claim order, scheduled soonest due first,
        others newest first. Keyset pagination: each page is one index range scan.

        Raises:
            ValueError: `cursor` is not one this engine handed out for this state.
        """
        state = JobState(state)
        limit = max(1, limit)
        key = _parse_cursor(cursor)

        def read(conn: sqlite3.Connection) -> JobPage:
            rows = _page(conn, queue, state, tenant, key, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = [decode_lenient(self._fields(r)) for r in rows]
            return JobPage(jobs, _cursor_for(state, rows[-1]) if more and rows else None)

        return await self._call(read)

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen event id; absent = only new ones).

        Blocks up to `block_ms` when there is nothing yet (another process's commit is
        noticed through ``PRAGMA data_version``, as in `wait_for_jobs`).
        """
        positions = dict(since or {})
        missing = [q for q in queues if q not in positions]
        if missing:
            positions.update(await self.last_event_ids(missing))
        after = {q: _int_id(positions[q]) for q in queues}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000

        def read(conn: sqlite3.Connection) -> tuple[int, list[Event]]:
            version = self._data_version(conn)  # before the query: no commit slips between
            rows: list[tuple[Any, ...]] = []
            for queue in queues:
                rows.extend(conn.execute(Q["read_events"], (queue, after[queue], count)))
            rows.sort(key=lambda r: int(r[0]))
            return version, [_event(r) for r in rows[:count]]

        closes = self._closes
        while True:
            generation = self._events_wake.generation
            version, events = await self._call(read)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            await self._wait_for_change(self._events_wake, generation, version, remaining)
            if self._closes != closes:  # do not reopen the file through `_call`
                return []
            if loop.time() >= deadline:
                return (await self._call(read))[1]

    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The id of the newest event of each queue ("0" when it has none)."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            return {
                q: str(conn.execute(Q["last_event_id"], (q,)).fetchone()[0] or 0) for q in queues
            }

        return await self._call(read)

    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute: one range over `jobs_finished` per state,
        so its cost is the number of jobs finished inside the window."""
        minutes = max(1, minutes)
        end = self.clock.now_ms()

        def read(conn: sqlite3.Connection) -> Throughput:
            out = Throughput(queue, end, [0] * minutes, [0] * minutes)
            for state, buckets in (("completed", out.completed), ("failed", out.failed)):
                rows = conn.execute(
                    Q["throughput"],
                    {"end": end, "queue": queue, "state": state, "since": end - minutes * 60_000},
                )
                for back, n in rows:
                    # A finish stamped after `end` (another process's clock) is "now".
                    buckets[minutes - 1 - max(0, int(back))] += int(n)
            return out

        return await self._call(read)


# --- listings ---------------------------------------------------------------------------


def _parse_cursor(cursor: str | None) -> tuple[int, int] | None:
    if not cursor:
        return None
    try:
        a, b = cursor.split(":")
        return int(a), int(b)
    except ValueError:
        raise ValueError(
            f"invalid cursor {cursor!r}: pass back the cursor of the previous page unchanged"
        ) from None


def _cursor_for(state: JobState, row: Sequence[Any]) -> str:
    """The keyset position after `row` (fields as in JOB_COLUMNS, then rowid)."""
    rowid = row[len(JOB_COLUMNS)]
    if state is JobState.PENDING:
        return f"{row[7]}:{row[22]}"  # priority, seq
    if state is JobState.SCHEDULED:
        return f"{row[13]}:{rowid}"  # scheduled_ms
    if state in (JobState.RUNNING, JobState.WAITING):
        return f"{row[12]}:{rowid}"  # created_ms
    return f"{row[15]}:{rowid}"  # finished_ms


def _pending(
    conn: sqlite3.Connection, bucket: str, args: dict[str, Any], key: tuple[int, int] | None
) -> list[tuple[Any, ...]]:
    """Up to args["n"] pending rows of one claim index after the keyset position `key`.

    (priority DESC, seq ASC) is not one row-value range: take the rest of the cursor's
    priority, then the lower priorities (two index range scans)."""
    rows: list[tuple[Any, ...]] = []
    if key is None:
        key = (MAX_PRIORITY + 1, 0)  # before every priority
    else:
        same = {**args, "priority": key[0], "seq": key[1]}
        rows = conn.execute(Q[f"list_pending_{bucket}_same"], same).fetchall()
    if len(rows) < args["n"]:
        lower = {**args, "priority": key[0], "n": args["n"] - len(rows)}
        rows += conn.execute(Q[f"list_pending_{bucket}_lower"], lower).fetchall()
    return rows


def _page(
    conn: sqlite3.Connection,
    queue: str,
    state: JobState,
    tenant: str | None,
    key: tuple[int, int] | None,
    n: int,
) -> list[tuple[Any, ...]]:
    """Up to `n` rows of one listing page (JOB_COLUMNS then rowid), in listing order."""
    args: dict[str, Any] = {"queue": queue, "tenant": tenant, "n": n}
    if state is JobState.PENDING:
        # Jobs without a tenant and tenant jobs sit in different indices (jobs_claim,
        # jobs_tenant_order): page through each, merge by claim order.
        # One tenant's jobs: its own index range (jobs_tenant_claim).
        buckets = ("one",) if tenant is not None else ("free", "tenant")
        rows = [r for b in buckets for r in _pending(conn, b, {**args}, key)]
        rows.sort(key=lambda r: (-r[7], r[22]))
        return rows[:n]
    # A tenant filter has its own queries (and migration 0002's indexes).
    suffix = "" if tenant is None else "_tenant"
    if state is JobState.SCHEDULED:
        k1, k2 = key or (_MIN_KEY, _MIN_KEY)
        return conn.execute(Q["list_scheduled" + suffix], {**args, "k1": k1, "k2": k2}).fetchall()
    k1, k2 = key or (_MAX_KEY, _MAX_KEY)
    if state is JobState.RUNNING:
        return conn.execute(Q["list_running" + suffix], {**args, "k1": k1, "k2": k2}).fetchall()
    if state is JobState.WAITING:
        return conn.execute(Q["list_waiting" + suffix], {**args, "k1": k1, "k2": k2}).fetchall()
    return conn.execute(
        Q["list_finished" + suffix], {**args, "state": state.value, "k1": k1, "k2": k2}
    ).fetchall()


# --- events -----------------------------------------------------------------------------


def _int_id(event_id: str) -> int:
    try:
        return int(event_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid event id {event_id!r}: pass back an id this engine returned"
        ) from None


def _event(row: Sequence[Any]) -> Event:
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
