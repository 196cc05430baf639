"""The read model on Postgres: jobs, counts, listings, the event log and throughput.

Listings are keyset pages over the partial indexes (one index range per page);
depth per state is a count over the queue's rows (Postgres keeps no trigger-kept
counters here: see the first migration for why).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from ...job import Job, JobState, decode_job, decode_lenient
from ...lifecycle import MAX_PRIORITY
from ..sqlite.read_model import _cursor_for, _event, _parse_cursor
from ..values import Event, JobPage, QueueCounts, Throughput
from .connection import POLL_INTERVAL_S, Conn, PgCore

_MIN_KEY = -(1 << 63)
_MAX_KEY = (1 << 63) - 1
_COUNTED = {s.value for s in JobState}


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
            counts = QueueCounts(queue=queue)
            cur = await conn.execute(self.q["queue_counts"], (queue,))
            for state, n in await cur.fetchall():
                if state in _COUNTED:
                    counts.set_state(state, int(n))
            cur = await conn.execute(self.q["queue_paused"], (queue,))
            paused = await cur.fetchone()
            counts.paused = bool(paused and paused[0])
            cur = await conn.execute(self.q["oldest_pending"], (queue,))
            oldest = await cur.fetchone()
            counts.oldest_pending_ms = None if not oldest or oldest[0] is None else int(oldest[0])
            since = await self._now(conn) - 60_000
            for state in ("completed", "failed"):
                cur = await conn.execute(self.q["finished_since"], (queue, state, since))
                row = await cur.fetchone()
                setattr(counts, f"{state}_1m", int(row[0]) if row else 0)
            return counts

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
        key = _parse_cursor(cursor)

        async def read(conn: Conn) -> JobPage:
            args: dict[str, Any] = {"queue": queue, "tenant": tenant, "n": limit + 1}
            if state is JobState.PENDING:
                priority, seq = key or (MAX_PRIORITY + 1, 0)
                name = "list_pending"
                args.update(priority=priority, seq=seq)
            elif state is JobState.SCHEDULED:
                k1, k2 = key or (_MIN_KEY, _MIN_KEY)
                name = "list_scheduled"
                args.update(k1=k1, k2=k2)
            else:
                k1, k2 = key or (_MAX_KEY, _MAX_KEY)
                name = {JobState.RUNNING: "list_running", JobState.WAITING: "list_waiting"}.get(
                    state, "list_finished"
                )
                args.update(k1=k1, k2=k2, state=state.value)
            cur = await conn.execute(self.q[name], args)
            rows = list(await cur.fetchall())
            more = len(rows) > limit
            rows = rows[:limit]
            jobs = [decode_lenient(self._fields(r)) for r in rows]
            return JobPage(jobs, _cursor_for(state, rows[-1]) if more and rows else None)

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
        positions = dict(since or {})
        missing = [q for q in queues if q not in positions]
        if missing:
            positions.update(await self.last_event_ids(missing))
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
                event = _event(r[:9])
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
                for back, n in await cur.fetchall():
                    buckets[minutes - 1 - max(0, int(back))] += int(n)
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
