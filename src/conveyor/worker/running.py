"""Running jobs: each claimed job is an asyncio task under the concurrency limit; its
outcome is queued for the next exchange (claiming.py) and counted, and the job hooks fire.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any

import orjson

from ..engines import Outcome
from ..job import Job
from ..partitions import logical
from ..tracing import take_carrier, traced
from . import joblog
from .loopwatch import JOB_TASK_PREFIX
from .outcomes import HOOK_KIND, as_finished
from .state import _EWMA, WorkerState, log


class JobRunning(WorkerState):
    """Starts claimed jobs while slots are free and collects their outcomes."""

    def _start_ready(self) -> None:
        """Start claimed jobs while slots are free (not once shutdown began: _drain hands
        the waiting ones back)."""
        while self._ready and len(self._running) < self.concurrency and not self.stopping:
            self._start(self._ready.popleft())

    def _start(self, job: Job) -> None:
        job._reporter = self._report_progress
        job.queue = logical(job.queue)  # the handler sees the queue, not its partition
        job._app = self.app  # job.children_results() / child_values() in a flow's parent
        task = asyncio.create_task(self._execute(job), name=f"{JOB_TASK_PREFIX}{job.id}")
        self._running[job.id] = (job, task)
        self.metrics.in_flight.set(len(self._running))

    async def _execute(self, job: Job) -> None:
        outcome: Outcome
        hooks = self.app.job_hooks
        carrier = take_carrier(job)  # even untraced: the handler never sees it
        joblog.started(job)
        if hooks:
            await self._fire("started", job)
        started = self.app.clock.monotonic()
        began = time.perf_counter()  # real time for the prefetch estimate, whatever the clock
        tracing = self.app.tracing
        try:
            if tracing is None:
                outcome = await self._runner.outcome(job)
            else:
                outcome = await traced(tracing, job, carrier, self._runner.outcome)
        except asyncio.CancelledError:
            if not self._releasing:  # lease lost: the job is someone else's now
                self._running.pop(job.id, None)
                self.metrics.in_flight.set(len(self._running))
                self._start_ready()
                self._wake.set()  # a slot is free: a full worker's claim loop waits for it
                raise
            outcome = Outcome(job.id, str(job.token), "release")
        self._running.pop(job.id, None)
        self._outbox.append(outcome)
        self._wake.set()
        self._job_time += (time.perf_counter() - began - self._job_time) * _EWMA
        self._start_ready()
        self._count(outcome.kind, job)
        duration = self.app.clock.monotonic() - started
        self.metrics.record_outcome(outcome.kind, job.queue, job.task, duration)
        joblog.finished(job, outcome, duration)
        if hooks:
            await self._fire(HOOK_KIND[outcome.kind], as_finished(job, outcome))

    async def _fire(self, kind: str, job: Job) -> None:
        for hook in self.app.job_hooks.get(kind, ()):
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(job)
                else:
                    await asyncio.get_running_loop().run_in_executor(self._pool, hook, job)
            except Exception:
                log.exception("%s hook %r failed for job %s", kind, hook, job.id)

    def _count(self, kind: str, job: Job) -> None:
        if kind == "complete":
            self.stats.processed += 1
        elif kind == "fail":
            self.stats.failed += 1
        elif kind == "retry":
            self.stats.retried += 1
        elif kind == "defer":
            self.stats.deferred += 1
        else:
            self.stats.released += 1

    async def _report_progress(self, job: Job, value: Any) -> None:
        engine = await self.app.connect()
        await engine.set_progress(job.id, str(job.token), orjson.dumps(value).decode())
