"""The read model on Postgres: jobs, counts, listings, the event log and throughput.

Listings are keyset pages over the partial indexes (one index range per page);
depth per state is a count over the queue's rows (Postgres keeps no trigger-kept
counters here: see the first migration for why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ...job import Job, JobState, decode_job
from .. import sql_common
from ..values import Event, JobPage, QueueCounts, Throughput
from .connection import POLL_INTERVAL_S, Conn, PgCore


class PgReadModel(PgCore):
    """What the CLI, API and dashboard read."""

    async def get_job(self, job_id: str) -> Job:
        """Raises `JobNotFound` if there is no such job, `MalformedJob` if undecodable."""

        async def read(conn: Conn) -> dict[str, Any]:
            return await self._load(conn, job_id)

        return decode_job(await self._run(read))

    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""

        async def read(conn: Conn) -> list[str]:
            cur = await conn.execute(self.q["queue_names"])
            return [str(r[0]) for r in await cur.fetchall()]

        return await self._run(read)

    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state, paused flag, age of the oldest pending job and
        completions/failures in the last minute."""

        async def read(conn: Conn) -> QueueCounts:
            cur = await conn.execute(self.q["queue_counts"], (queue,))
            depths = await cur.fetchall()
            cur = await conn.execute(self.q["queue_paused"], (queue,))
            paused = await cur.fetchone()
            cur = await conn.execute(self.q["oldest_pending"], (queue,))
            oldest = await cur.fetchone()
            since = await self._now(conn) - 60_000
            finished = {}
            for state in ("completed", "failed"):
                cur = await conn.execute(self.q["finished_since"], (queue, state, since))
                row = await cur.fetchone()
                finished[state] = int(row[0]) if row else 0
            return sql_common.queue_counts(
                queue,
                depths,
                paused=bool(paused and paused[0]),
                oldest_pending_ms=None if not oldest or oldest[0] is None else int(oldest[0]),
                finished_1m=finished,
            )

        return await self._run(read)

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
        others newest first (keyset pages; cursors as the SQLite engine's).

        Raises:
            ValueError: `cursor` is not one this engine handed out for this state.
        """
        state = JobState(state)
        limit = max(1, limit)
        k1, k2 = sql_common.page_start(state, sql_common.parse_cursor(cursor))

        async def read(conn: Conn) -> JobPage:
            args: dict[str, Any] = {"queue": queue, "tenant": tenant, "n": limit + 1}
            if state is JobState.PENDING:
                name = "list_pending"
                args.update(priority=k1, seq=k2)
            elif state is JobState.SCHEDULED:
                name = "list_scheduled"
                args.update(k1=k1, k2=k2)
            else:
                name = {JobState.RUNNING: "list_running", JobState.WAITING: "list_waiting"}.get(
                    state, "list_finished"
                )
                args.update(k1=k1, k2=k2, state=state.value)
            cur = await conn.execute(self.q[name], args)
            return sql_common.job_page(state, await cur.fetchall(), limit, self._fields)

        return await self._run(read)

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen event id; absent = only new ones).

        An event id is ``"pos-id"`` (its transaction's commit position, then the row),
        and events come in commit order: before reading, the reader stamps the event
        transactions that committed since the last stamp with the next positions, under
        a lock held to its own COMMIT, so no event ever appears behind a position a
        reader has passed, and an unrelated open transaction delays nothing (migration
        0010). Blocks up to `block_ms` when there is nothing yet (woken by NOTIFY, which
        Postgres delivers after the commit).
        """
        positions = await sql_common.read_positions(queues, since, self.last_event_ids)
        after = {q: _position(positions[q]) for q in queues}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + block_ms / 1000

        async def read(conn: Conn) -> list[Event]:
            await conn.execute(self.q["stamp_events"])
            rows: list[tuple[Any, ...]] = []
            for queue in queues:
                pos, row_id = after[queue]
                cur = await conn.execute(
                    self.q["read_events"], {"queue": queue, "pos": pos, "id": row_id, "n": count}
                )
                rows.extend(await cur.fetchall())
            rows.sort(key=lambda r: (int(r[9]), int(r[0])))
            events = []
            for r in rows[:count]:
                event = sql_common.event_of(r[:9])
                event.id = f"{r[9]}-{r[0]}"
                events.append(event)
            return events

        await self._listen_from_now()  # before the first read: no NOTIFY missed after it
        closes = self._closes
        settling = False  # woken by a NOTIFY whose events are not readable yet
        while True:
            generation = self._events_wake.generation
            events = await self._run(read)
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return events
            await self._wait(
                self._events_wake,
                generation,
                min(remaining, POLL_INTERVAL_S) if settling else remaining,
            )
            settling = self._events_wake.generation != generation or settling
            if self._closes != closes:
                return []

    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The position "now" for each queue (``"pos-0"`` after the last commit position,
        once what has committed is stamped), so a reader starting there misses no event
        still to come."""

        async def read(conn: Conn) -> int:
            cur = await conn.execute(self.q["read_horizon"])
            row = await cur.fetchone()
            assert row is not None
            return int(row[0])

        now = await self._run(read, single=True)
        # Every event of commit `now` is read: start at the next position.
        return dict.fromkeys(queues, f"{now + 1}-0")

    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute: one range over `jobs_finished` per state."""
        minutes = max(1, minutes)

        async def read(conn: Conn) -> Throughput:
            end = await self._now(conn)
            out = Throughput(queue, end, [0] * minutes, [0] * minutes)
            for state, buckets in (("completed", out.completed), ("failed", out.failed)):
                cur = await conn.execute(
                    self.q["throughput"],
                    {"end": end, "queue": queue, "state": state, "since": end - minutes * 60_000},
                )
                sql_common.tally_minutes(buckets, await cur.fetchall())
            return out

        return await self._run(read)


def _position(event_id: str) -> tuple[int, int]:
    """(commit position, row id) of an event id ``"pos-id"`` (``"0"``: the start).

    Raises:
        ValueError: not an id this engine handed out.
    """
    try:
        pos, _, row_id = str(event_id).partition("-")
        return int(pos), int(row_id or 0)
    except (TypeError, ValueError):
        raise ValueError(
            f"invalid event id {event_id!r}: pass back an id this engine returned"
        ) from None
