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

from ...job import Job, JobState, decode_job
from .. import sql_common
from ..values import Event, JobPage, QueueCounts, Throughput
from .connection import Q, SqliteCore

# The listing query of each state but pending (its own, `_pending`) and the finished ones.
_LISTING = {
    JobState.SCHEDULED: "list_scheduled",
    JobState.RUNNING: "list_running",
    JobState.WAITING: "list_waiting",
}


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
            paused = conn.execute(Q["queue_paused"], (queue,)).fetchone()
            oldest = conn.execute(Q["oldest_pending"], (queue,)).fetchone()[0]
            since = self.clock.now_ms() - 60_000
            return sql_common.queue_counts(
                queue,
                conn.execute(Q["queue_counts"], (queue,)),
                paused=bool(paused and paused[0]),
                oldest_pending_ms=None if oldest is None else int(oldest),
                finished_1m={
                    state: int(
                        conn.execute(Q["finished_since"], (queue, state, since)).fetchone()[0]
                    )
                    for state in ("completed", "failed")
                },
            )

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
        key = sql_common.parse_cursor(cursor)

        def read(conn: sqlite3.Connection) -> JobPage:
            return sql_common.job_page(
                state, _page(conn, queue, state, tenant, key, limit + 1), limit, self._fields
            )

        return await self._call(read)

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen event id; absent = only new ones).

        Blocks up to `block_ms` when there is nothing yet (another process's commit is
        noticed through ``PRAGMA data_version``, as in `wait_for_jobs`).
        """
        positions = await sql_common.read_positions(queues, since, self.last_event_ids)
        after = {q: _int_id(positions[q]) for q in queues}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000

        def read(conn: sqlite3.Connection) -> tuple[int, list[Event]]:
            version = self._data_version(conn)  # before the query: no commit slips between
            rows: list[tuple[Any, ...]] = []
            for queue in queues:
                rows.extend(conn.execute(Q["read_events"], (queue, after[queue], count)))
            rows.sort(key=lambda r: int(r[0]))
            return version, [sql_common.event_of(r) for r in rows[:count]]

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
                sql_common.tally_minutes(buckets, rows)
            return out

        return await self._call(read)


# --- listings ---------------------------------------------------------------------------


def _pending(
    conn: sqlite3.Connection, bucket: str, args: dict[str, Any], key: tuple[int, int] | None
) -> list[tuple[Any, ...]]:
    """Up to args["n"] pending rows of one claim index after the keyset position `key`.

    (priority DESC, seq ASC) is not one row-value range: take the rest of the cursor's
    priority, then the lower priorities (two index range scans)."""
    rows: list[tuple[Any, ...]] = []
    if key is not None:
        same = {**args, "priority": key[0], "seq": key[1]}
        rows = conn.execute(Q[f"list_pending_{bucket}_same"], same).fetchall()
    if len(rows) < args["n"]:
        priority = sql_common.page_start(JobState.PENDING, key)[0]
        lower = {**args, "priority": priority, "n": args["n"] - len(rows)}
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
    name = _LISTING.get(state, "list_finished") + suffix
    k1, k2 = sql_common.page_start(state, key)
    return conn.execute(Q[name], {**args, "state": state.value, "k1": k1, "k2": k2}).fetchall()


# --- events -----------------------------------------------------------------------------


def _int_id(event_id: str) -> int:
    try:
        return int(event_id)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid event id {event_id!r}: pass back an id this engine returned"
        ) from None
