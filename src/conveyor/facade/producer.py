"""The producer side of the app: validate and encode jobs once, then store them."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel

from .. import backoff as backoff_mod
from ..engines import Engine
from ..errors import ConfigError, InvalidJob, InvalidPayload, UnknownTask
from ..job import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    EnqueueResult,
    Job,
    JobState,
    NewJob,
    encode_payload,
    new_id_suffixes,
    new_job_id,
)
from ..partitions import check_layout, discover, logical
from ..payloads import STRICT, payload_json
from ..task import Task
from ..tracing import TRACE_KEY
from .checks import (
    check_attempts,
    check_label,
    check_priority,
    check_queue,
    check_text,
    check_timeout,
    due,
)
from .core import AppCore
from .results import ResultWaiter, outcome
from .transactional import AsyncOutbox, SyncOutbox, in_transaction, outbox_for

# A JSON object, or an instance of the task's payload model (`conveyor.payloads`).
Payload = Mapping[str, Any] | BaseModel | None

ENQUEUE_OPTIONS = frozenset(
    {
        "queue",
        "delay",
        "run_at",
        "priority",
        "dedupe_key",
        "tenant",
        "max_attempts",
        "backoff",
        "timeout",
    }
)


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What storing one job did.

    Attributes:
        job: the stored job, or the live job that already held its dedupe key.
        created: True when `job` is new; False when the dedupe key was held (nothing
            was written).
    """

    job: Job
    created: bool


class Producer(AppCore):
    """Build, validate and enqueue jobs (async and sync)."""

    def build(self, task: str, payload: Payload = None, **options: Any) -> NewJob:
        """Validate and encode one job without storing it (used by enqueue and outbox).

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: nothing is enqueued.
        """
        # What the task's registration checked (its queue, its max_attempts) and what
        # is left out (priority 0, no delay) is not checked again: a single enqueue is
        # the producer's hot path. Every value given per job is.
        registered = self.tasks.get(task) if isinstance(task, str) else None
        if options or registered is None:
            queue, priority, max_attempts, timeout, backoff_json, delay_ms, run_at_ms = (
                self._options(task, registered, options)
            )
            tenant = check_label("tenant", options.get("tenant"), 128)
            dedupe_key = check_label("dedupe_key", options.get("dedupe_key"), 512)
        else:  # no options: the registration's queue and max_attempts, nothing else
            queue, priority, max_attempts = registered.queue, 0, registered.max_attempts
            timeout = backoff_json = run_at_ms = tenant = dedupe_key = None
            delay_ms = 0
            check_text("task", task)
        model = registered.payload_model if registered else None
        body = payload_json({} if payload is None else payload, model)
        # A partitioned queue's job is stored in one of its partitions (partitions.py).
        stored_in, dedupe_key = self.partitions.route(queue, tenant, dedupe_key)
        job_id = new_job_id(stored_in)
        if self.tracing is not None:
            carrier = self.tracing.enqueued(task, queue, job_id)
            if carrier and isinstance(body, dict):
                body = {**body, TRACE_KEY: carrier}
        return NewJob(
            id=job_id,
            queue=stored_in,
            task=task,
            payload_json=encode_payload(body, self.max_payload_bytes),
            max_attempts=max_attempts,
            priority=priority,
            tenant=tenant,
            dedupe_key=dedupe_key,
            timeout=timeout,
            backoff_json=backoff_json,
            delay_ms=delay_ms,
            run_at_ms=run_at_ms,
        )

    def _options(
        self, task: str, registered: Task | None, options: dict[str, Any]
    ) -> tuple[str, int, int, float | None, str | None, int, int | None]:
        """`build`'s checks of the options given (queue, priority, max_attempts, timeout,
        backoff, delay, run_at) and of the task when it is not registered here.

        Raises:
            UnknownTask, InvalidJob: nothing is enqueued.
        """
        unknown = options.keys() - ENQUEUE_OPTIONS if options else ()
        if unknown:
            raise InvalidJob(
                f"unknown enqueue option(s) {', '.join(sorted(unknown))}: "
                f"valid options are {', '.join(sorted(ENQUEUE_OPTIONS))}"
            )
        queue = options.get("queue")
        if registered is None and queue is None:
            raise UnknownTask(
                f"task {task!r} is not registered in this process: register it with "
                "@app.task, or pass queue= to enqueue it for a worker that has it"
            )
        if not isinstance(task, str) or not task:
            raise InvalidJob("task name must be a non-empty string")
        check_text("task", task)
        if queue:
            queue = check_queue(queue, error=InvalidJob)
        else:  # checked when the task was registered, or the app made
            queue = registered.queue if registered else self.default_queue
        priority = options.get("priority")
        if priority is None:
            priority = 0
        else:
            check_priority(priority, MIN_PRIORITY, MAX_PRIORITY)
        max_attempts = options.get("max_attempts")
        if max_attempts is not None:
            check_attempts(max_attempts, error=InvalidJob)
        else:
            max_attempts = registered.max_attempts if registered else 3
        timeout = options.get("timeout")
        check_timeout(timeout, error=InvalidJob)
        backoff_json = None
        if options.get("backoff") is not None:
            try:
                backoff_json = orjson.dumps(
                    backoff_mod.coerce(options["backoff"]).to_spec()
                ).decode()
            except ConfigError as exc:
                raise InvalidJob(str(exc)) from exc
        delay_ms, run_at_ms = due(options.get("delay"), options.get("run_at"))
        return queue, priority, max_attempts, timeout, backoff_json, delay_ms, run_at_ms

    async def enqueue(
        self, task: str, payload: Payload = None, *, connection: Any = None, **options: Any
    ) -> Job:
        """Enqueue one job. Once this returns, the job is stored durably.

        Args:
            task: registered task name (or any name, with `queue=`).
            payload: a JSON object, or an instance of the task's payload model.
            connection: a `psycopg.AsyncConnection` (postgresql:// apps only): the job
                is written inside that connection's current transaction, so it exists
                only if the transaction commits (`conveyor.facade.transactional`).
            **options: queue, delay (seconds or timedelta), run_at (datetime),
                priority (-100..100, higher first), dedupe_key, tenant,
                max_attempts, backoff, timeout.

        Returns:
            The new job, or the live job that already holds `dedupe_key`.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob, EngineUnavailable,
            ConfigError (`connection` given to an app that is not on Postgres).
        """
        new = self.build(task, payload, **options)
        if connection is None:
            return (await self._store_one(new))[0]
        engine = in_transaction(await self.connect(), self.url)
        [res] = await engine.enqueue_in(connection, [new])
        if not res.created:
            return self._own(await engine.get_job_in(connection, res.id))
        return self._own(self._assemble(new, res, self.clock.now()))

    async def enqueue_built(self, new: NewJob) -> Enqueued:
        """Store one job made by `build`, saying whether it is new or deduplicated (the
        HTTP API answers 201 or 200 from it).

        Returns:
            The stored job (or the live one holding its dedupe key) and `created`.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        return Enqueued(*await self._store_one(new))

    async def enqueue_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Enqueue many jobs in one round trip per queue; all are validated first.

        Each item is a mapping with `task`, optional `payload` and any `enqueue` option.
        If any item is invalid, nothing is enqueued.
        """
        return [job for job, _ in await self._store(self._build_many(items))]

    def _build_many(self, items: Iterable[Mapping[str, Any]]) -> list[NewJob]:
        """`build` every item of `enqueue_many` (`task`, optional `payload`, options).

        What a task's jobs share is decided once per task, not per job: an item that
        holds only a task and a dict payload costs an encode, an id and a `NewJob`
        (about half of `build`; bench/RESULTS.md, branch redisbulk).

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: naming the item.
        """
        listed = items if isinstance(items, list) else list(items)
        suffixes = new_id_suffixes(len(listed))
        # task -> (queue, max_attempts) when its option-less jobs need nothing of
        # `build` but the payload's encoding; None when they do (a payload model,
        # tracing, a partitioned queue, a name that is not text).
        plain: dict[str, tuple[str, int] | None] = {}
        limit = self.max_payload_bytes
        built = []
        task: Any
        payload: Any
        for index, item in enumerate(listed):
            fast = None
            if type(item) is dict and len(item) <= 1 + ("payload" in item):
                task = item.get("task")
                if type(task) is str:
                    fast = plain[task] if task in plain else self._plain_task(plain, task)
                    payload = item.get("payload")
                    if payload is None:
                        payload = {}
                    elif type(payload) is not dict:
                        fast = None
            if fast is None:
                spec = dict(item)
                if "task" not in spec:
                    raise InvalidJob(f"item {index} has no 'task': each item needs one")
                task, payload = spec.pop("task"), spec.pop("payload", None)
            try:
                if fast is None:
                    built.append(self.build(task, payload, **spec))
                else:
                    queue, max_attempts = fast
                    # encode_payload's checks, inline for the usual payload (one that
                    # holds a null, or fails, takes encode_payload for its verdict).
                    # find(), not `in`: bytes' `in` first tries its operand as an int
                    # and builds a TypeError (~1,800 instructions per job, callgrind).
                    try:
                        raw = orjson.dumps(payload, option=STRICT)
                    except orjson.JSONEncodeError:
                        raw = b"null"
                    if len(raw) <= limit and raw.find(b"null") < 0:
                        body = raw.decode()
                    else:
                        body = encode_payload(payload, limit)
                    built.append(
                        NewJob(f"{queue}:{suffixes[index]}", queue, task, body, max_attempts)
                    )
            except InvalidPayload as exc:
                raise InvalidPayload(f"item {index}: {exc}", fields=exc.fields) from exc
            except InvalidJob as exc:
                raise type(exc)(f"item {index}: {exc}") from exc
        return built

    def _plain_task(
        self, plain: dict[str, tuple[str, int] | None], task: str
    ) -> tuple[str, int] | None:
        """`_build_many`'s decision for `task`'s option-less jobs, stored in `plain`."""
        registered = self.tasks.get(task)
        fast = None
        if (
            registered is not None
            and registered.payload_model is None
            and self.tracing is None
            and self.partitions.count(registered.queue) == 1
        ):
            try:
                check_text("task", task)
                fast = (registered.queue, registered.max_attempts)
            except InvalidJob:
                pass  # `build` raises it, naming the item
        plain[task] = fast
        return fast

    async def store_built(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs made by `build` exactly as they are (ids included), all or none,
        without reading deduplicated ones back: the scheduler's occurrences, whose fixed
        ids make a repeat a no-op.

        Returns:
            The engine's answer per job (id, created, state), in order.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        if not jobs:
            return []
        # Fixed ids (a scheduled occurrence's) name their partition already: not moved.
        jobs = await self._settle(jobs, move=False)
        return await (await self.connect()).enqueue(jobs)

    async def _store(self, jobs: Sequence[NewJob]) -> list[tuple[Job, bool]]:
        """Store `jobs`: (job, created) of each, as `_store_one` (no frozen `Enqueued`
        per job: one of a bulk enqueue cost about as much as its draft's payload)."""
        if not jobs:
            return []
        if not self._settled(jobs):
            jobs = await self._settle(jobs)
        engine = self.engine if self._connected else await self.connect()
        if len(jobs) == 1:
            return [await self._store_one(jobs[0], engine)]
        # Several jobs: the engine's call runs as a task while the jobs to return are
        # built here (its first write is out after one step), so on Redis this work
        # overlaps the script calls instead of following them. They are made ready to
        # return (`_own`, each queue's name looked up once) before the replies are in:
        # after the last one, what is left per job is its state.
        storing = asyncio.ensure_future(engine.enqueue(jobs))
        try:
            await asyncio.sleep(0)
            now = self.clock.now()
            owner = self._sync_owner or self
            shown = {q: logical(q) for q in {new.queue for new in jobs}}
            drafts = [self._draft(new, now) for new in jobs]
            for job in drafts:
                job._app, job.queue = owner, shown[job.queue]
            results = await storing
        finally:
            if not storing.done():  # cancelled: let it end, and retrieve its outcome
                storing.add_done_callback(lambda f: f.cancelled() or f.exception())
        out: list[tuple[Job, bool]] = []
        for new, res, job in zip(jobs, results, drafts, strict=True):
            if not res.created:
                out.append((self._own(await engine.get_job(res.id)), False))
                continue
            out.append((self._stored_as(job, new, res), True))
        return out

    async def _store_one(self, new: NewJob, engine: Engine | None = None) -> tuple[Job, bool]:
        """`_store([new])[0]` as (job, created), without the lists or the frozen
        `Enqueued` (the single enqueue's hot path)."""
        if engine is None:
            if not self._settled((new,)):
                return (await self._store([new]))[0]
            engine = self.engine if self._connected else await self.connect()
        [res] = await engine.enqueue((new,))
        if not res.created:
            return self._own(await engine.get_job(res.id)), False
        return self._own(self._assemble(new, res, self.clock.now())), True

    def _settled(self, jobs: Sequence[NewJob]) -> bool:
        """Whether `_settle` would change nothing: every queue's layout was checked, and
        none is partitioned (the usual case after the first job, decided without it)."""
        checked, counts = self._layouts_checked, self.partitions.counts
        # A loop, not all(<generator>): a generator per single enqueue costs more.
        for new in jobs:  # noqa: SIM110
            if new.queue not in checked or new.queue in counts:
                return False
        return True

    async def _settle(self, jobs: Sequence[NewJob], *, move: bool = True) -> Sequence[NewJob]:
        """Once per process and queue, before its first job is stored: a declared
        partition count is checked against the layout the queue's live jobs are in
        (`PartitionsChanged`), and a queue this app does not declare takes the count its
        stored partitions show, so a producer without the app's code (`conveyor
        enqueue`) stores into the partitions, not beside them. With `move`, jobs built
        before that was known are routed to their partition."""
        out = list(jobs)
        for index, new in enumerate(jobs):
            queue = logical(new.queue)
            if queue not in self._layouts_checked:
                engine = await self.connect()
                if queue in self.partitions.counts:
                    await check_layout(engine, queue, self.partitions.count(queue))
                elif (found := await discover(engine, queue)) is not None:
                    self.partitions.declare(queue, found)
                self._layouts_checked.add(queue)
            if move and new.queue == queue and self.partitions.count(queue) > 1:
                home, key = self.partitions.route(queue, new.tenant, new.dedupe_key)
                out[index] = dataclasses.replace(
                    new, id=new_job_id(home), queue=home, dedupe_key=key
                )
        return out

    @classmethod
    def _assemble(cls, new: NewJob, res: EnqueueResult, now: float) -> Job:
        """The `Job` a created enqueue stored (built here: no read back)."""
        return cls._stored_as(cls._draft(new, now), new, res)

    @staticmethod
    def _draft(new: NewJob, now: float) -> Job:
        """The `Job` a created enqueue stores, as pending; `_stored_as` then sets the
        id and state the engine answered."""
        # Positional, in `Job`'s field order (id ... created_at): keywords cost twice as
        # much (0.99 against 0.48 us per job, one per job of a bulk enqueue).
        backoff = orjson.loads(new.backoff_json) if new.backoff_json else None
        return Job(new.id, new.queue, new.task, orjson.loads(new.payload_json), JobState.PENDING,
                   0, new.max_attempts, new.priority, new.tenant, new.dedupe_key, new.timeout,
                   backoff, now)  # fmt: skip

    @staticmethod
    def _stored_as(job: Job, new: NewJob, res: EnqueueResult) -> Job:
        """`job` (from `_assemble`) with the id and state the engine stored it under."""
        job.id = res.id
        job.state = res.state
        if res.state == JobState.SCHEDULED:
            now = job.created_at
            job.scheduled_at = (
                new.run_at_ms / 1000 if new.run_at_ms is not None else now + new.delay_ms / 1000
            )
        return job

    def enqueue_sync(
        self, task: str, payload: Payload = None, *, connection: Any = None, **options: Any
    ) -> Job:
        """`enqueue` for synchronous code (Flask, Django, scripts). Thread-safe.

        Args:
            connection: a sync `psycopg.Connection` (postgresql:// apps only): the job
                is written inside its current transaction, on the calling thread (see
                `enqueue`).
        """
        if connection is None:
            return self._bridge().run(lambda app: app.enqueue(task, payload, **options))
        new = self.build(task, payload, **options)
        # The schema must exist before a statement runs in the caller's transaction (a
        # failed statement would abort it): the bridge's app connects (and migrates) once.
        engine = in_transaction(self._bridge().run(lambda app: app.connect()), self.url)
        [res] = engine.enqueue_in_sync(connection, [new])
        if not res.created:
            return self._own(engine.get_job_in_sync(connection, res.id))
        return self._own(self._assemble(new, res, self.clock.now()))

    def outbox(self, connection: Any, *, schema: str = "conveyor") -> AsyncOutbox | SyncOutbox:
        """The outbox in `connection`'s Postgres database, for jobs that live in another
        engine (Redis): `add(task, payload, **options)` writes a job row inside the
        connection's current transaction, and `conveyor relay --from
        postgresql://...?schema=SCHEMA` turns committed rows into jobs, each exactly once.

        Args:
            connection: a psycopg 3 connection: `AsyncConnection` (then `add` is async)
                or `Connection` (`add` is sync).
            schema: the schema the relay reads (`?schema=` of its --from URL).

        Raises:
            ConfigError: `connection` is not a psycopg 3 connection.
        """
        return outbox_for(self, connection, schema)

    def enqueue_many_sync(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """`enqueue_many` for synchronous code."""
        materialised = list(items)
        return self._bridge().run(lambda app: app.enqueue_many(materialised))

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for job `job_id` to finish and return its result (what the handler
        returned, as stored JSON). Driven by the engine's events: one shared reader per
        app, however many callers wait (`conveyor.facade.results`).

        Args:
            job_id: the job's id.
            timeout: seconds to wait at most; `None` waits as long as it takes.

        Returns:
            The job's result.

        Raises:
            JobFailed: the job failed; carries the last error and its traceback.
            JobCancelled: the job was cancelled.
            TimeoutError: it is not finished after `timeout` seconds.
            JobNotFound: no job has that id.
        """
        return outcome(await self.wait_for_job(job_id, timeout))

    async def wait_for_job(self, job_id: str, timeout: float | None = None) -> Job:
        """Like `wait`, but return the finished job whatever its state (no JobFailed).

        Raises:
            TimeoutError: it is not finished after `timeout` seconds.
            JobNotFound: no job has that id.
        """
        if self._results is None:
            self._results = ResultWaiter(self)
        return self._own(await self._results.wait(job_id, timeout))

    def wait_sync(self, job_id: str, timeout: float | None = None) -> Any:
        """`wait` for synchronous code (Flask, Django, scripts); same errors."""
        return self._bridge().run(lambda app: app.wait(job_id, timeout))
