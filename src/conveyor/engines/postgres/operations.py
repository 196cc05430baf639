"""Operator actions on Postgres: pause, resume, retry, cancel, promote, retry-all,
clean, purge.

Which states each action accepts and what a refusal says come from
`conveyor.lifecycle`; they are checked here, on the job row locked ``FOR UPDATE``,
because the check must sit inside the same transaction as the change. Arguments were
validated by the app facade and are not checked again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg.errors

from ...job import Job, JobState, decode_job
from ...lifecycle import BULK_BATCH, dedupe_held
from ..sql_common import (
    RETRIED_BY_OPERATOR,
    bound_after,
    delete_in_batches,
    refuse_unless,
    retry_all_pages,
)
from .connection import Conn, PgCore, event_row
from .queries import JOB_COLUMNS


class PgOperations(PgCore):
    """What operators do to queues and jobs (CLI, API, dashboard, through the app)."""

    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""

        async def tx(conn: Conn) -> None:
            await conn.execute(self.q["pause"], (queue,))

        await self._run(tx)

    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers (of every process, by NOTIFY)."""

        async def tx(conn: Conn) -> None:
            await conn.execute(self.q["resume"], (queue,))
            await self._send(conn, jobs=True)

        await self._run(tx)
        self._notify(jobs=True)

    async def _retry_rows(self, conn: Conn, rows: Sequence[dict[str, Any]], now: int) -> list[str]:
        """Put finished jobs back to pending with a fresh attempt budget (history kept);
        returns the ids retried. A job whose dedupe key another live job holds is
        skipped: two live jobs never share a key."""
        events: list[tuple[Any, ...]] = []
        for job in rows:
            try:
                async with conn.transaction():  # a savepoint: a lost race skips one job
                    cur = await conn.execute(self.q["retry_row"], (job["id"],))
                    done = await cur.fetchone() is not None
            except psycopg.errors.UniqueViolation:  # an enqueue took the key meanwhile
                done = False
            if done:
                # a retried flow child re-arms its failed parent (migration 0005)
                await conn.execute(self.q["flow_rearm"], (job["id"], now))
                events.append(
                    event_row(job["queue"], "enqueued", job["id"], job["task"], job["tenant"],
                              0, now, RETRIED_BY_OPERATOR)
                )  # fmt: skip
        await self._add_events(conn, events)
        if events:
            await self._send(conn, jobs=True)
        return [e[2] for e in events]

    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled → pending with a fresh attempt budget.

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not retryable, or its dedupe key is held by another
                live job (the error names it); nothing changes.
        """

        async def tx(conn: Conn) -> dict[str, Any]:
            job = await self._load(conn, job_id, lock=True)
            refuse_unless("retry", job)
            if not await self._retry_rows(conn, [job], await self._now(conn)):
                key = job["dedupe_key"]
                cur = await conn.execute(self.q["dedupe_holder"], (job["queue"], key))
                holder = await cur.fetchone()
                raise dedupe_held(job_id, key, str(holder[0]) if holder else "(unknown)")
            return await self._load(conn, job_id)

        fields = await self._run(tx)
        self._notify(jobs=True, events=True)
        return decode_job(fields)

    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running → cancelled (a running job's lease is revoked).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job has already finished.
        """

        async def tx(conn: Conn) -> dict[str, Any]:
            job = await self._load(conn, job_id, lock=True)
            refuse_unless("cancel", job)
            now = await self._now(conn)
            await conn.execute(self.q["cancel"], (now, job_id))
            await self._add_events(
                conn,
                [event_row(job["queue"], "cancelled", job_id, job["task"], job["tenant"],
                           job["attempt"], now)],
            )  # fmt: skip
            await self._send(conn, jobs=True)  # a cancelled running job may free a slot
            return await self._load(conn, job_id)

        fields = await self._run(tx)
        self._notify(jobs=True, events=True)
        return decode_job(fields)

    async def promote_job(self, job_id: str) -> Job:
        """scheduled → pending now (back of its priority).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not scheduled.
        """

        async def tx(conn: Conn) -> dict[str, Any]:
            job = await self._load(conn, job_id, lock=True)
            refuse_unless("promote", job)
            await conn.execute(self.q["promote"], (job_id,))
            await self._add_events(
                conn,
                [event_row(job["queue"], "promoted", job_id, job["task"], job["tenant"],
                           job["attempt"], await self._now(conn))],
            )  # fmt: skip
            await self._send(conn, jobs=True)
            return await self._load(conn, job_id)

        fields = await self._run(tx)
        self._notify(jobs=True, events=True)
        return decode_job(fields)

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state`; returns how many were retried.

        Jobs whose dedupe key another live job holds are skipped (they stay where they
        are) and not counted. Batches of short transactions, below a moving bound.
        """
        state = JobState(state)

        async def tx(conn: Conn, bound: tuple[int, int]) -> tuple[int, tuple[int, int] | None]:
            cur = await conn.execute(
                self.q["retry_all_page"],
                {"queue": queue, "state": state.value, "k1": bound[0], "k2": bound[1],
                 "n": BULK_BATCH},
            )  # fmt: skip
            rows = await cur.fetchall()
            if not rows:
                return 0, None
            jobs = [self._fields(r[: len(JOB_COLUMNS)]) for r in rows]
            done = len(await self._retry_rows(conn, jobs, await self._now(conn)))
            return done, bound_after(rows)

        return await retry_all_pages(
            lambda bound: self._run(lambda conn: tx(conn, bound)),
            lambda: self._notify(jobs=True, events=True),
        )

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in the finished `state` that finished more than
        `older_than_ms` ago, oldest finish first; returns how many."""
        state = JobState(state)

        async def tx(conn: Conn) -> int:
            cutoff = await self._now(conn) - older_than_ms
            cur = await conn.execute(self.q["clean"], (queue, state.value, cutoff, limit))
            return cur.rowcount

        return await self._run(tx)

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and so its dedupe keys; returns how
        many. Deletes in batches of short transactions (workers keep running).

        A purge of at least `BULK_BATCH` jobs then vacuums the jobs table, the event log,
        the tenants and the rate log (`purge_vacuum`). Every version of every deleted job
        stays in the table and its indexes until a VACUUM: the claim index keeps the dead
        entries of the purged pending jobs at its head (they sort before every job enqueued
        later), so each claim steps over them, and the lease probe over the dead entries of
        the jobs that ran; the event log's trim likewise steps over every event it trimmed
        before. Autovacuum gets to them in its own time, or never where it is off; measured
        in bench/pg_w1_cost.py --same-db, each purged 20,000-job run left the next one's
        claims about 100 index pages longer (bench/RESULTS.md, "pgchurn").
        """

        async def batch(conn: Conn) -> int:
            cur = await conn.execute(self.q["purge_batch"], (queue, BULK_BATCH))
            return cur.rowcount

        total = await delete_in_batches(lambda: self._run(batch))

        async def forget(conn: Conn) -> None:
            await conn.execute(self.q["purge_forget"], (queue,))
            await conn.execute(self.q["purge_rate_log"], (queue,))

        await self._run(forget)
        if total >= BULK_BATCH:

            async def vacuum(conn: Conn) -> None:
                await conn.execute(self.q["purge_vacuum"])

            await self._run(vacuum, single=True)
        return total
