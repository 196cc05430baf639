"""Operator actions on Redis: pause/resume, retry/cancel/promote one job, retry-all,
clean, purge, and queue limits.

Each is one script (or a bounded batch of calls); the preconditions are lifecycle's
sets, checked inside the script for atomicity, and the refusals are lifecycle's errors.
Arguments were validated by the app facade, so nothing here checks them again.
"""

from __future__ import annotations

from ... import lifecycle
from ...job import Job, JobState, queue_of
from ...limits import QueueLimits
from .connection import RedisBase, driver_errors

_BATCH = lifecycle.BULK_BATCH  # jobs per script call for bulk operations: short scripts


class RedisOperations(RedisBase):
    """What the CLI, API and dashboard do to queues and jobs."""

    @driver_errors
    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""
        await self._run("pause", queue)

    @driver_errors
    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""
        await self._run("resume", queue)

    @driver_errors
    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled -> pending with a fresh attempt budget (errors are kept).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not failed or cancelled, or its dedupe key is held
                by another live job (nothing changed).
        """
        reply = await self._run("retry_job", queue_of(job_id), job_id)
        return self._decode_reply(reply, job_id, lifecycle.not_retryable)

    @driver_errors
    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running -> cancelled (a running job's lease is revoked).

        Raises:
            JobNotFound: no such job.
            InvalidState: the job already finished.
        """
        reply = await self._run("cancel_job", queue_of(job_id), job_id)
        return self._decode_reply(reply, job_id, lifecycle.not_cancellable)

    @driver_errors
    async def promote_job(self, job_id: str) -> Job:
        """scheduled -> pending now.

        Raises:
            JobNotFound: no such job.
            InvalidState: the job is not scheduled.
        """
        reply = await self._run("promote_job", queue_of(job_id), job_id)
        return self._decode_reply(reply, job_id, lifecycle.not_promotable)

    @driver_errors
    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state` (failed or cancelled: the app checked),
        most recently finished first, in batches; returns how many. Jobs whose dedupe
        key another live job holds are skipped (they stay where they are), not counted."""
        total = skipped = 0
        bound = ""  # the first call fixes it: jobs finished later are not this run's
        while True:
            retried, examined, skips, bound = await self._run(
                "retry_all", queue, state.value, _BATCH, skipped, bound
            )
            total += int(retried)
            skipped += int(skips)
            if int(examined) < _BATCH:
                return total

    @driver_errors
    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in finished `state` (the app refused live states) that
        finished at least `older_than_ms` ago, oldest first."""
        total = 0
        while total < limit:
            batch = min(_BATCH, limit - total)
            n = int(await self._run("clean", queue, state.value, older_than_ms, batch))
            total += n
            if n < batch:
                break
        return total

    @driver_errors
    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and its dedupe keys; returns how many."""
        total = 0
        while True:
            n = int(await self._run("purge", queue, _BATCH))
            total += n
            if n < _BATCH:
                return total

    @driver_errors
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits in its `limits` hash (None: none) and wake idle workers."""
        values = (limits or QueueLimits()).fields()
        if limits is None or limits.empty:
            values = dict.fromkeys(values)
        await self._run("set_limits", queue, *("" if v is None else v for v in values.values()))
