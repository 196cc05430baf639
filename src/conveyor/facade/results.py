"""Waiting for a job's result: `await job.wait(timeout=10)` (the facade's side of it:
it reads the engine's event log, which only the facade may do).

Waiting is driven by the engine's event log, not by polling: an app has one
`ResultWaiter`, and it runs one reader task (one blocking `read_events` over the queues
that have waiters, so one engine connection on Redis however many callers wait) that
resolves every waiter of a job when its `completed` / `failed` / `cancelled` event
arrives. The reader runs only while someone waits.

No waiter misses its job's end. Timeline of the race this prevents:

    waiter: pin the queue's event position P   (only if the reader has none for it)
    worker: job finishes -> event E (after P)
    waiter: get_job -> finished?  yes: return it at once
                                  no:  E is after the position the waiter saw, so the
                                       reader, which reads from P on, delivers E

The reader's position for a queue is only ever set while nobody waits on that queue
(so never past an event a waiter still needs) and then only advances past events it
has handled.

A queue declared with `events=False` has no event log (lifecycle rule 7), so a waiter
on one of its jobs polls the job instead: first after POLL_FIRST_S, then twice as
long each time up to POLL_MAX_S (a job that takes a minute costs about 120 reads, a
job done at once a handful).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import EngineUnavailable, JobCancelled, JobFailed
from ..job import FINISHED_STATES, Job, JobState, queue_of
from ..lifecycle import writes_events

if TYPE_CHECKING:
    from ..engines import Engine


class _App(Protocol):
    """The app, as far as waiting needs it (the facade builds on this module)."""

    async def connect(self) -> Engine: ...

    @property
    def unstreamed(self) -> AbstractSet[str]: ...


log = logging.getLogger("conveyor.results")

FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})
READ_BLOCK_MS = 1_000  # as app.events: bounds how long close() waits for a Redis read
RETRY_AFTER_S = 0.5  # engine trouble: the reader retries (waiters keep their timeouts)
# Each waiter's first look (pin the queue, read the job) takes one of these lanes: a
# client library opens a connection per concurrent command, so a thousand waiters
# arriving together would otherwise open a thousand connections.
LOOKUP_LANES = 2
POLL_FIRST_S = 0.01  # a queue without events: the first look again after this...
POLL_MAX_S = 0.5  # ...doubling up to this (bounded: no busy loop, no long lag)


class ResultWaiter:
    """The app's shared event reader for `wait` (see the module docstring).

    Args:
        app: the app whose engine is read.
    """

    def __init__(self, app: _App) -> None:
        self._app = app
        self._waiters: dict[str, list[asyncio.Future[Job]]] = {}
        self._per_queue: dict[str, int] = {}  # queue -> waiters on it
        self._cursor: dict[str, str] = {}  # queue -> last event handled
        self._reader: asyncio.Task[None] | None = None
        self._reading: frozenset[str] = frozenset()
        self.reads = 0  # read_events calls made, for tests and debugging
        self._lanes = asyncio.Semaphore(LOOKUP_LANES)

    @property
    def waiting(self) -> int:
        """How many `wait` calls are waiting now."""
        return sum(len(futures) for futures in self._waiters.values())

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Wait until job `job_id` is finished; return it (whatever its final state).

        Args:
            job_id: the job's id.
            timeout: seconds to wait at most; `None` waits as long as it takes.

        Returns:
            The finished job (`completed`, `failed` or `cancelled`).

        Raises:
            TimeoutError: it is not finished after `timeout` seconds.
            JobNotFound: no job has that id.
            EngineUnavailable: the engine cannot be reached for the first look.
        """
        engine = await self._app.connect()
        queue = queue_of(job_id)
        if not writes_events(queue, self._app.unstreamed):
            return await self._poll(engine, job_id, timeout)
        future: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        self._per_queue[queue] = self._per_queue.get(queue, 0) + 1
        try:
            async with self._lanes:
                if queue not in self._cursor:
                    pinned = (await engine.last_event_ids([queue]))[queue]
                    self._cursor.setdefault(queue, pinned)  # another waiter pinned first?
                self._ensure_reader()
                job = await engine.get_job(job_id)
            if job.state in FINISHED_STATES:
                return job
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise TimeoutError(
                    f"job {job_id} is not finished after {timeout:g}s: wait longer, or "
                    "look at it with `conveyor job ID`"
                ) from None
        finally:
            self._forget(job_id, queue, future)

    async def _poll(self, engine: Engine, job_id: str, timeout: float | None) -> Job:
        """`wait` for a job of a queue without events: read it until it is finished."""
        async with self._lanes:
            job = await engine.get_job(job_id)  # JobNotFound / EngineUnavailable: raised
        delay = POLL_FIRST_S

        async def until_finished() -> Job:
            nonlocal job, delay
            while job.state not in FINISHED_STATES:
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)
                try:
                    async with self._lanes:
                        job = await engine.get_job(job_id)
                except EngineUnavailable as exc:  # as the reader: retry, keep the timeout
                    log.warning("polling job %s: %s; retrying", job_id, exc)
            return job

        try:
            return await asyncio.wait_for(until_finished(), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"job {job_id} is not finished after {timeout:g}s: wait longer, or "
                "look at it with `conveyor job ID`"
            ) from None

    def _forget(self, job_id: str, queue: str, future: asyncio.Future[Job]) -> None:
        futures = self._waiters.get(job_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self._waiters.pop(job_id, None)
        self._per_queue[queue] -= 1
        if not self._per_queue[queue]:
            del self._per_queue[queue]
            self._cursor.pop(queue, None)

    def _ensure_reader(self) -> None:
        """Start the reader, or restart it when a queue joined (its blocking read does
        not cover the new queue; the position is kept, so nothing is skipped)."""
        wanted = frozenset(self._per_queue)
        if self._reader is not None and not self._reader.done():
            if wanted <= self._reading:
                return
            self._reader.cancel()
        self._reading = wanted
        self._reader = asyncio.create_task(self._read(wanted), name="conveyor-results")

    async def _read(self, queues: frozenset[str]) -> None:
        engine = await self._app.connect()
        names = sorted(queues)
        while self._waiters:
            since = {q: self._cursor[q] for q in names if q in self._cursor}
            try:
                self.reads += 1
                events = await engine.read_events(
                    names, since=since, count=500, block_ms=READ_BLOCK_MS
                )
                done = {e.job_id for e in events if e.kind in FINAL_EVENTS}
                waited = [job_id for job_id in done if job_id in self._waiters]
                if waited:
                    jobs = await asyncio.gather(*(engine.get_job(j) for j in waited))
                    for job in jobs:
                        self._resolve(job)
            except EngineUnavailable as exc:
                log.warning("result reader: %s; retrying in %.1fs", exc, RETRY_AFTER_S)
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            except Exception:  # never die silently: waiters would hang until timeout
                log.exception("result reader failed; retrying in %.1fs", RETRY_AFTER_S)
                await asyncio.sleep(RETRY_AFTER_S)
                continue
            for event in events:
                if event.queue in self._cursor:  # a queue nobody waits on any more is dropped
                    self._cursor[event.queue] = event.id

    def _resolve(self, job: Job) -> None:
        if job.state not in FINISHED_STATES:  # retried by hand since: keep waiting
            return
        for future in self._waiters.get(job.id, []):
            if not future.done():
                future.set_result(job)

    async def close(self) -> None:
        """Stop the reader (waiters still waiting keep their own timeouts)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None


def outcome(job: Job) -> Any:
    """The result of a finished job, or the error that says why there is none.

    Raises:
        JobFailed: the job failed (the last error and its traceback are on it).
        JobCancelled: the job was cancelled.
    """
    if job.state == JobState.FAILED:
        raise JobFailed(job)
    if job.state == JobState.CANCELLED:
        raise JobCancelled(job)
    return job.result
