"""Operator actions on SQLite: pause, resume, retry, cancel, promote, retry-all, clean,
purge.

Which states each action accepts and what a refusal says come from
`conveyor.lifecycle` (`RETRYABLE`, `CANCELLABLE`, `PROMOTABLE` and their errors); they
are checked here only because the check must sit inside the same transaction as the
change. Arguments (the state given to `retry_all` / `clean`) were validated by the
app facade and are not checked again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

from ...job import Job, JobState, decode_job
from ...lifecycle import BULK_BATCH, dedupe_held
from ..sql_common import (
    RETRIED_BY_OPERATOR,
    bound_after,
    delete_in_batches,
    refuse_unless,
    retry_all_pages,
)
from .connection import Q, SqliteCore
from .queries import JOB_COLUMNS

_PURGE = ("purge_scheduled", "purge_pending", "purge_running", "purge_finished", "purge_waiting")


class SqliteOperations(SqliteCore):
    """What operators do to queues and jobs (CLI, API, dashboard, through the app)."""

    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""
        await self._write(lambda conn: conn.execute(Q["pause"], (queue,)))

    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""
        await self._write(lambda conn: conn.execute(Q["resume"], (queue,)))
        self._jobs_wake.notify()

    def _rearm_parent(self, conn: sqlite3.Connection, job_id: str, now: int) -> None:
        """A retried flow child re-arms its failed parent (`SqliteFlows`)."""

    def _retry_rows(
        self, conn: sqlite3.Connection, rows: Sequence[dict[str, Any]], now: int
    ) -> list[str]:
        """Put finished jobs back to pending with a fresh attempt budget (history kept);
        returns the ids retried. A job whose dedupe key another live job holds is
        skipped (the dedupe index refuses it): two live jobs never share a key."""
        events: list[tuple[Any, ...]] = []
        for job in rows:
            # One place in line per retry, taken when it happens (as Redis and Postgres
            # do): a retried flow child re-arms its parent's other children in between.
            if conn.execute(Q["retry_row"], (self._reserve_seq(conn, 1), job["id"])).rowcount:
                self._rearm_parent(conn, job["id"], now)
                events.append(
                    (job["queue"], "enqueued", job["id"], job["task"], job["tenant"], 0, now,
                     RETRIED_BY_OPERATOR)
                )  # fmt: skip
        self._add_events(conn, events)
        return [e[2] for e in events]

    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled → pending with a fresh attempt budget.

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not retryable, or its dedupe key is held by another
                live job (the error names it); nothing changes.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            refuse_unless("retry", job)
            if not self._retry_rows(conn, [job], self.clock.now_ms()):
                key = job["dedupe_key"]
                holder = conn.execute(Q["dedupe_holder"], (job["queue"], key)).fetchone()
                raise dedupe_held(job_id, key, holder[0] if holder else "(unknown)")
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._jobs_wake.notify()
        self._events_wake.notify()
        return decode_job(fields)

    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running → cancelled (a running job's lease is revoked).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job has already finished.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            refuse_unless("cancel", job)
            now = self.clock.now_ms()
            conn.execute(Q["cancel"], (now, job_id))
            self._add_events(
                conn,
                [(job["queue"], "cancelled", job_id, job["task"], job["tenant"],
                  job["attempt"], now, None)],
            )  # fmt: skip
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._events_wake.notify()
        self._jobs_wake.notify()  # a cancelled running job may free a limited slot
        return decode_job(fields)

    async def promote_job(self, job_id: str) -> Job:
        """scheduled → pending now (back of its priority).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not scheduled.
        """

        def tx(conn: sqlite3.Connection) -> dict[str, Any]:
            job = self._load(conn, job_id)
            refuse_unless("promote", job)
            conn.execute(Q["promote"], (self._reserve_seq(conn, 1), job_id))
            self._add_events(
                conn,
                [(job["queue"], "promoted", job_id, job["task"], job["tenant"],
                  job["attempt"], self.clock.now_ms(), None)],
            )  # fmt: skip
            return self._load(conn, job_id)

        fields = await self._write(tx)
        self._jobs_wake.notify()
        self._events_wake.notify()
        return decode_job(fields)

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state`; returns how many were retried.

        Jobs whose dedupe key another live job holds are skipped (they stay where they
        are) and not counted. Works in batches of short transactions so workers are
        not locked out while a large dead-letter backlog is re-queued.
        """
        state = JobState(state)

        def tx(
            conn: sqlite3.Connection, bound: tuple[int, int]
        ) -> tuple[int, tuple[int, int] | None]:
            rows = conn.execute(
                Q["retry_all_page"],
                {"queue": queue, "state": state.value, "k1": bound[0], "k2": bound[1],
                 "n": BULK_BATCH},
            ).fetchall()  # fmt: skip
            if not rows:
                return 0, None
            jobs = [self._fields(r[: len(JOB_COLUMNS)]) for r in rows]
            done = len(self._retry_rows(conn, jobs, self.clock.now_ms()))
            return done, bound_after(rows)

        def woke() -> None:
            self._jobs_wake.notify()
            self._events_wake.notify()

        return await retry_all_pages(lambda bound: self._write(lambda conn: tx(conn, bound)), woke)

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in the finished `state` that finished more than
        `older_than_ms` ago, oldest finish first; returns how many."""
        state = JobState(state)

        def tx(conn: sqlite3.Connection) -> int:
            cutoff = self.clock.now_ms() - older_than_ms
            return conn.execute(Q["clean"], (queue, state.value, cutoff, limit)).rowcount

        return await self._write(tx)

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and so its dedupe keys; returns how
        many. Deletes in batches of short transactions (workers keep running)."""

        async def batch(sql: str) -> int:
            return await self._write(lambda conn: conn.execute(sql, (queue, BULK_BATCH)).rowcount)

        total = 0
        for name in _PURGE:
            total += await delete_in_batches(partial(batch, Q[name]))

        def forget(conn: sqlite3.Connection) -> None:
            conn.execute(Q["purge_forget"], (queue,))
            conn.execute(Q["purge_rate_log"], (queue,))

        await self._write(forget)
        return total
