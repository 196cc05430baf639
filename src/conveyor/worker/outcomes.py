"""Running one handler and turning what it did into an `Outcome` for the engine.

The worker loop (claiming.py, running.py) decides *when* a job runs; this module decides what its
attempt amounts to: completed with a result, retried after the task's backoff, deferred
without spending an attempt (`RateLimited`), or failed (attempts spent, `Unrecoverable`,
an unknown task, stored data that cannot be decoded).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from .. import backoff as backoff_mod
from ..engines import Outcome
from ..errors import InvalidPayload, InvalidResult, RateLimited, Retry, Unrecoverable
from ..job import AttemptError, Job, JobState, encode_result
from ..payloads import decode_payload
from ..task import Task
from .isolation import ChildError, ProcessPool

if TYPE_CHECKING:
    from ..app import Conveyor

log = logging.getLogger("conveyor.worker")

HOOK_KIND = {
    "complete": "completed",
    "fail": "failed",
    "retry": "retried",
    "release": "released",
    "defer": "deferred",
}
_FINAL_STATE = {
    "complete": JobState.COMPLETED,
    "fail": JobState.FAILED,
    "retry": JobState.SCHEDULED,
    "release": JobState.PENDING,
    "defer": JobState.SCHEDULED,
}


def as_finished(job: Job, outcome: Outcome) -> Job:
    """The job as hooks see it after `outcome` (state, result, the new error)."""
    job.state = _FINAL_STATE[outcome.kind]
    if outcome.kind in ("retry", "defer") and outcome.delay_ms == 0:
        job.state = JobState.PENDING
    if outcome.kind == "defer":  # the engine gave the attempt back
        job.attempt = max(0, job.attempt - 1)
    if outcome.result_json is not None:
        job.result = orjson.loads(outcome.result_json)
    if outcome.error_json is not None:
        job.errors.append(AttemptError.from_obj(orjson.loads(outcome.error_json)))
    return job


async def call_hook(hook: Any) -> None:
    """Call a startup/shutdown hook, sync or async."""
    result = hook()
    if inspect.isawaitable(result):
        await result


class Runner:
    """Runs handlers of `app` for the worker `worker_id` (sync ones in `pool`).

    Args:
        app: the app whose tasks run.
        pool: the thread pool for plain (`def`) handlers.
        worker_id: named in the error of a job whose task this worker lacks.
        process_pool: the child processes of isolated handlers, if any
            (`conveyor.worker.isolation`).
    """

    def __init__(
        self,
        app: Conveyor,
        pool: ThreadPoolExecutor,
        worker_id: str,
        *,
        process_pool: ProcessPool | None = None,
    ) -> None:
        self.app = app
        self.pool = pool
        self.worker_id = worker_id
        self.process_pool = process_pool

    async def outcome(self, job: Job) -> Outcome:
        """Run `job`'s handler once and return what the engine must record.

        Raises:
            asyncio.CancelledError: the run was cancelled (lease lost, or shutdown).
        """
        token = str(job.token)
        if job.decode_error is not None:
            return self.error(job, "MalformedJob", job.decode_error, final=True)
        task = self.app.tasks.get(job.task)
        if task is None:
            return self.error(
                job,
                "UnknownTask",
                f"no handler for task {job.task!r} in worker {self.worker_id}: deploy a "
                "worker that registers it, then retry the job",
                final=True,
            )
        if task.payload_model is not None:
            try:
                model: Any = decode_payload(job.payload, task.payload_model)
            except InvalidPayload as exc:  # enqueued without the model: never fits
                return self.error(job, "InvalidPayload", str(exc), final=True)
            job.payload = model  # the handler (and the hooks after it) see the model
        timeout = job.timeout if job.timeout is not None else task.timeout
        deadline: asyncio.Timeout | None = None
        isolated = self.process_pool is not None and self.process_pool.handles(task)
        try:
            if timeout is None:  # the common case: no timer per job
                result = await self._call(task, job)
            else:
                # An isolated attempt's timer is armed by the pool once a child takes the
                # job: the wait for a free child is not the handler's time.
                async with asyncio.timeout(None if isolated else timeout) as deadline:
                    result = await self._call(task, job, deadline, timeout)
        except Retry as exc:
            return self.error(job, "Retry", exc.reason, delay=exc.delay)
        except RateLimited as exc:
            # A dependency said "not now" (or a circuit breaker is open): that is not a
            # failed attempt, so the job is deferred and keeps its attempt budget.
            return Outcome(
                job.id,
                token,
                "defer",
                delay_ms=int(exc.retry_after * 1000),
                reason=exc.reason,
            )
        except Unrecoverable as exc:
            return self.error(
                job,
                "Unrecoverable",
                str(exc) or "unrecoverable",
                final=True,
                tb=traceback.format_exc(),
            )
        except TimeoutError:
            if deadline is not None and deadline.expired():
                return self.error(
                    job, "JobTimeout", f"attempt {job.attempt} exceeded its {timeout:g}s timeout"
                )
            return self._exception(job)
        except Exception:
            return self._exception(job)
        try:
            result_json = encode_result(result)
        except InvalidResult as exc:  # a failed attempt: the job's error says why
            return self.error(job, "InvalidResult", str(exc))
        return Outcome(job.id, token, "complete", result_json=result_json)

    async def _call(
        self,
        task: Task,
        job: Job,
        deadline: asyncio.Timeout | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run the handler: in a child process when isolated, else coroutines on the loop
        and plain functions in the thread pool."""
        if self.process_pool is not None and self.process_pool.handles(task):
            return await self.process_pool.run(job, deadline, timeout)
        if task.is_async:
            return await task.fn(job)
        loop = asyncio.get_running_loop()
        if self.app.tracing is not None:  # the attempt's span is current in the thread too
            return await loop.run_in_executor(
                self.pool, contextvars.copy_context().run, task.fn, job
            )
        return await loop.run_in_executor(self.pool, task.fn, job)

    def _exception(self, job: Job) -> Outcome:
        exc = sys.exc_info()[1]
        if isinstance(exc, ChildError):  # raised in a child process: its own type and trace
            return self.error(job, exc.type_name, exc.message, tb=exc.remote_traceback)
        return self.error(job, type(exc).__name__, str(exc), tb=traceback.format_exc())

    def error(
        self,
        job: Job,
        kind: str,
        message: str,
        *,
        final: bool = False,
        delay: float | None = None,
        tb: str | None = None,
    ) -> Outcome:
        """A failed attempt: `retry` after the backoff while attempts are left, else `fail`."""
        error = AttemptError(job.attempt, kind, message, tb, self.app.clock.now()).to_json()
        if final or job.attempt >= job.max_attempts:
            return Outcome(job.id, str(job.token), "fail", error_json=error)
        if delay is None:
            delay = self._policy(job).delay_for(job.attempt)
        return Outcome(
            job.id, str(job.token), "retry", error_json=error, delay_ms=int(delay * 1000)
        )

    def _policy(self, job: Job) -> backoff_mod.Backoff:
        if job.backoff is not None:
            return backoff_mod.from_spec(job.backoff)
        task = self.app.tasks.get(job.task)
        return task.backoff if task else backoff_mod.DEFAULT_BACKOFF
