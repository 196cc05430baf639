"""The `Conveyor` app: the registry of tasks plus the engine it talks to.

Producers and workers import the same app object. The facade validates and encodes
once, then calls the engine; nothing below it repeats that work.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

import orjson

from . import backoff as backoff_mod
from .breaker import CircuitBreaker
from .clock import Clock
from .engines import Engine, Event, JobPage, QueueCounts, QueueLimits, open_engine
from .engines.base import LeaseInfo
from .errors import ConfigError, InvalidJob, UnknownTask
from .job import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    QUEUE_NAME,
    Job,
    JobState,
    NewJob,
    encode_payload,
    new_job_id,
)
from .schedules import (
    LEADER_LEASE,
    ScheduleInfo,
    ScheduleSpec,
    cron_schedule,
    every_schedule,
    schedule_info,
)
from .settings import Settings
from .task import Handler, Task

H = TypeVar("H", bound=Handler)
Hook = Callable[[], Any]  # sync or async, no arguments
JobHook = Callable[[Job], Any]  # sync or async, gets the job
F = TypeVar("F", bound=Hook)
G = TypeVar("G", bound=JobHook)
JOB_HOOK_KINDS = ("started", "completed", "failed", "retried", "released", "deferred")
R = TypeVar("R")
_ENQUEUE_OPTIONS = frozenset(
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


class Conveyor:
    """Register tasks and enqueue jobs.

    Args:
        url: engine URL (`redis://…`, `sqlite:///path`, `memory://`). When omitted it
            is resolved on first use from `CONVEYOR_URL`, then `REDIS_URL`, then the
            embedded SQLite file `./conveyor.db`.
        default_queue: queue for tasks registered without `queue=`.
        max_payload_bytes: largest accepted payload (default from settings: 1 MiB).
        clock: time source (tests pass a `FakeClock` with the memory engine).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        default_queue: str = "default",
        max_payload_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_queue(default_queue)
        self._url = url
        self.default_queue = default_queue
        self._max_payload_bytes = max_payload_bytes
        self.clock = clock or Clock()
        self.tasks: dict[str, Task] = {}
        self._engine: Engine | None = None
        self._connected = False
        self._connect_lock: asyncio.Lock | None = None
        self._sync: _SyncBridge | None = None
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self.job_hooks: dict[str, list[JobHook]] = {}
        self.schedules: dict[str, ScheduleSpec] = {}  # code-defined, by name
        self.breakers: dict[str, CircuitBreaker] = {}  # per process, by name
        self.queue_limits: dict[str, QueueLimits] = {}  # code-defined, applied by workers

    # --- configuration ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The engine URL (resolved from the environment on first use if not given)."""
        if self._url is None:
            self._url = Settings.load().url
        return self._url

    @property
    def max_payload_bytes(self) -> int:
        if self._max_payload_bytes is None:
            self._max_payload_bytes = Settings.load().max_payload_bytes
        return self._max_payload_bytes

    def configure(self, *, url: str | None = None, max_payload_bytes: int | None = None) -> None:
        """Override settings before first use (the CLI applies its flags here).

        Raises:
            ConfigError: the app is already connected to an engine.
        """
        if self._engine is not None and (url is not None and url != self._url):
            raise ConfigError("configure(url=...) must be called before the app connects")
        if url is not None:
            self._url = url
        if max_payload_bytes is not None:
            self._max_payload_bytes = max_payload_bytes

    @property
    def engine(self) -> Engine:
        """The engine object (built on first access, connected by `connect`)."""
        if self._engine is None:
            self._engine = open_engine(self.url, clock=self.clock)
        return self._engine

    async def connect(self) -> Engine:
        """Connect the engine once; later calls return it at once.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        if not self._connected:
            if self._connect_lock is None:
                self._connect_lock = asyncio.Lock()
            async with self._connect_lock:
                if not self._connected:
                    await self.engine.connect()
                    self._connected = True
        return self.engine

    async def close(self) -> None:
        """Close the engine's connections (and the sync bridge's)."""
        if self._engine is not None:
            await self._engine.close()
        self._engine = None
        self._connected = False
        self._connect_lock = None
        if self._sync is not None:
            if self._sync.pid == os.getpid():
                self._sync.close()
            else:  # inherited through fork: its thread is gone (see _bridge)
                _abandoned.append(self._sync)
            self._sync = None

    async def __aenter__(self) -> Conveyor:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- registry --------------------------------------------------------------------
    def task(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        max_attempts: int = 3,
        backoff: backoff_mod.BackoffLike = None,
        timeout: float | None = None,
    ) -> Callable[[H], H]:
        """Register a handler as a task.

        Args:
            name: task name (default: the function's `module.qualname`).
            queue: queue its jobs go to (default: the app's default queue).
            max_attempts: attempts before the job is failed (>= 1).
            backoff: delays between attempts: `[1, 5, 30]`, a number, `"exponential"`,
                or a policy from `conveyor.backoff`.
            timeout: seconds an attempt may run; over it the attempt fails.

        Raises:
            ConfigError: an option is invalid or the name is already registered.
        """
        queue = check_queue(queue or self.default_queue)
        _check_attempts(max_attempts)
        policy = backoff_mod.coerce(backoff)
        _check_timeout(timeout)

        def register(fn: H) -> H:
            task_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not fn:
                raise ConfigError(f"task {task_name!r} is registered twice: pick another name")
            self.tasks[task_name] = Task(task_name, fn, queue, max_attempts, policy, timeout)
            return fn

        return register

    def breaker(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 60.0,
        exclude: tuple[type[BaseException], ...] = (),
    ) -> CircuitBreaker:
        """The circuit breaker `name` of this process (made on first call).

        Use it as `async with breaker:`, `with breaker:` or `@breaker` around calls to a
        dependency. While it is open, calls raise `BreakerOpen` at once and the worker
        defers the job until the breaker half-opens, without spending an attempt. Its
        state is local to the worker process (see `conveyor.breaker`).

        Args:
            name: the dependency ("smtp"); the label of `conveyor_circuit_state`.
            failure_threshold: consecutive failures that open it.
            reset_timeout: seconds before a trial call.
            exclude: exception types that do not count as the dependency failing.

        Raises:
            ConfigError: an invalid option, or `name` exists with other options.
        """
        existing = self.breakers.get(name)
        if existing is not None:
            if (existing.failure_threshold, existing.reset_timeout, existing.exclude) != (
                failure_threshold,
                float(reset_timeout),
                exclude,
            ):
                raise ConfigError(
                    f"breaker {name!r} already exists with other options: use one "
                    "definition (module level) and import it where it is needed"
                )
            return existing
        breaker = CircuitBreaker(
            name,
            failure_threshold=failure_threshold,
            reset_timeout=reset_timeout,
            exclude=exclude,
            clock=self.clock,
        )
        self.breakers[name] = breaker
        return breaker

    def limits(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Declare fleet-wide limits for `queue`; every worker that serves it stores them
        in the engine when it starts (use `set_limits` to change them right away).

        Args:
            queue: the queue.
            concurrency: running jobs of the queue at once, across all workers.
            tenant_concurrency: running jobs of one tenant at once (jobs without a
                tenant are not limited by it).
            rate: jobs started per window, e.g. `"100/1s"`, `"5/250ms"`, `"1000/1m"`.
            tenant_rate: the same per tenant.

        Returns:
            The limits (None fields: no limit).

        Raises:
            ConfigError: an invalid value; the message names the option and the fix.
        """
        limits = QueueLimits.build(
            concurrency=concurrency,
            tenant_concurrency=tenant_concurrency,
            rate=rate,
            tenant_rate=tenant_rate,
        )
        self.queue_limits[check_queue(queue)] = limits
        return limits

    async def set_limits(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Store `queue`'s limits in the engine now, replacing the ones it had (no
        arguments: no limits). Every worker obeys them from its next claim.

        Raises:
            ConfigError: an invalid value.
            EngineUnavailable: the engine cannot be reached.
        """
        limits = QueueLimits.build(
            concurrency=concurrency,
            tenant_concurrency=tenant_concurrency,
            rate=rate,
            tenant_rate=tenant_rate,
        )
        await (await self.connect()).set_limits(check_queue(queue), limits)
        return limits

    async def get_limits(self, queue: str) -> QueueLimits:
        """The limits the engine enforces for `queue` now."""
        return await (await self.connect()).get_limits(check_queue(queue, error=InvalidJob))

    def on_startup(self, fn: F) -> F:
        """Run `fn()` in each worker after its health server is up, before it claims."""
        self.startup_hooks.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run `fn()` in each worker after in-flight jobs are done, before it disconnects."""
        self.shutdown_hooks.append(fn)
        return fn

    def on(self, kind: str) -> Callable[[G], G]:
        """Run `fn(job)` in the worker when one of its jobs is started, completed,
        failed (dead-lettered), retried, released or deferred. Exceptions are logged.

        Raises:
            ConfigError: `kind` is not one of those.
        """
        if kind not in JOB_HOOK_KINDS:
            raise ConfigError(
                f"app.on({kind!r}) is unknown: use one of {', '.join(JOB_HOOK_KINDS)}"
            )

        def register(fn: G) -> G:
            self.job_hooks.setdefault(kind, []).append(fn)
            return fn

        return register

    # --- producers -------------------------------------------------------------------
    def build(self, task: str, payload: Mapping[str, Any] | None = None, **options: Any) -> NewJob:
        """Validate and encode one job without storing it (used by enqueue and outbox).

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: nothing is enqueued.
        """
        unknown = set(options) - _ENQUEUE_OPTIONS
        if unknown:
            raise InvalidJob(
                f"unknown enqueue option(s) {', '.join(sorted(unknown))}: "
                f"valid options are {', '.join(sorted(_ENQUEUE_OPTIONS))}"
            )
        registered = self.tasks.get(task)
        queue = options.get("queue")
        if registered is None and queue is None:
            raise UnknownTask(
                f"task {task!r} is not registered in this process: register it with "
                "@app.task, or pass queue= to enqueue it for a worker that has it"
            )
        if not isinstance(task, str) or not task:
            raise InvalidJob("task name must be a non-empty string")
        queue = check_queue(
            queue or (registered.queue if registered else self.default_queue), error=InvalidJob
        )
        priority = options.get("priority") or 0
        if not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            raise InvalidJob(
                f"priority={priority!r} is invalid: use an integer from {MIN_PRIORITY} to "
                f"{MAX_PRIORITY} (higher runs first)"
            )
        max_attempts = options.get("max_attempts")
        if max_attempts is None:
            max_attempts = registered.max_attempts if registered else 3
        _check_attempts(max_attempts, error=InvalidJob)
        timeout = options.get("timeout")
        _check_timeout(timeout, error=InvalidJob)
        backoff_json = None
        if options.get("backoff") is not None:
            try:
                backoff_json = orjson.dumps(
                    backoff_mod.coerce(options["backoff"]).to_spec()
                ).decode()
            except ConfigError as exc:
                raise InvalidJob(str(exc)) from exc
        delay_ms, run_at_ms = _due(options.get("delay"), options.get("run_at"))
        tenant = _check_label("tenant", options.get("tenant"), 128)
        dedupe_key = _check_label("dedupe_key", options.get("dedupe_key"), 512)
        return NewJob(
            id=new_job_id(queue),
            queue=queue,
            task=task,
            payload_json=encode_payload({} if payload is None else payload, self.max_payload_bytes),
            max_attempts=max_attempts,
            priority=priority,
            tenant=tenant,
            dedupe_key=dedupe_key,
            timeout=timeout,
            backoff_json=backoff_json,
            delay_ms=delay_ms,
            run_at_ms=run_at_ms,
        )

    async def enqueue(
        self, task: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> Job:
        """Enqueue one job. Once this returns, the job is stored durably.

        Args:
            task: registered task name (or any name, with `queue=`).
            payload: a JSON object.
            **options: queue, delay (seconds or timedelta), run_at (datetime),
                priority (-100..100, higher first), dedupe_key, tenant,
                max_attempts, backoff, timeout.

        Returns:
            The new job, or the live job that already holds `dedupe_key`.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob, EngineUnavailable.
        """
        return (await self._store([self.build(task, payload, **options)]))[0]

    async def enqueue_many(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """Enqueue many jobs in one round trip per queue; all are validated first.

        Each item is a mapping with `task`, optional `payload` and any `enqueue` option.
        If any item is invalid, nothing is enqueued.
        """
        built = []
        for index, item in enumerate(items):
            spec = dict(item)
            try:
                task = spec.pop("task")
            except KeyError:
                raise InvalidJob(f"item {index} has no 'task': each item needs one") from None
            payload = spec.pop("payload", None)
            try:
                built.append(self.build(task, payload, **spec))
            except InvalidJob as exc:
                raise type(exc)(f"item {index}: {exc}") from exc
        return await self._store(built)

    async def _store(self, jobs: Sequence[NewJob]) -> list[Job]:
        if not jobs:
            return []
        engine = await self.connect()
        results = await engine.enqueue(jobs)
        now = self.clock.now()
        out = []
        for new, res in zip(jobs, results, strict=True):
            if not res.created:
                out.append(await engine.get_job(res.id))
                continue
            out.append(
                Job(
                    id=res.id,
                    queue=new.queue,
                    task=new.task,
                    payload=orjson.loads(new.payload_json),
                    state=res.state,
                    max_attempts=new.max_attempts,
                    priority=new.priority,
                    tenant=new.tenant,
                    dedupe_key=new.dedupe_key,
                    timeout=new.timeout,
                    backoff=orjson.loads(new.backoff_json) if new.backoff_json else None,
                    created_at=now,
                    scheduled_at=(
                        new.run_at_ms / 1000
                        if new.run_at_ms is not None
                        else now + new.delay_ms / 1000
                    )
                    if res.state == JobState.SCHEDULED
                    else None,
                )
            )
        return out

    def enqueue_sync(
        self, task: str, payload: Mapping[str, Any] | None = None, **options: Any
    ) -> Job:
        """`enqueue` for synchronous code (Flask, Django, scripts). Thread-safe."""
        return self._bridge().run(lambda app: app.enqueue(task, payload, **options))

    def enqueue_many_sync(self, items: Iterable[Mapping[str, Any]]) -> list[Job]:
        """`enqueue_many` for synchronous code."""
        materialised = list(items)
        return self._bridge().run(lambda app: app.enqueue_many(materialised))

    def get_job_sync(self, job_id: str) -> Job:
        """`get_job` for synchronous code."""
        return self._bridge().run(lambda app: app.get_job(job_id))

    def _bridge(self) -> _SyncBridge:
        sync = self._sync
        if sync is not None and sync.pid != os.getpid():
            # We are a forked child (gunicorn --preload, multiprocessing): the bridge's
            # loop thread did not survive the fork and its connections are the parent's.
            # Abandon it without closing anything (closing would talk on the parent's
            # sockets) and build our own.
            _abandoned.append(sync)
            sync = None
        if sync is None:
            sync = self._sync = _SyncBridge(self)
        return sync

    # --- read model and operations (shared by CLI, API, dashboard) ---------------------
    async def get_job(self, job_id: str) -> Job:
        """The job with every attempt's error. Raises `JobNotFound`."""
        return await (await self.connect()).get_job(job_id)

    async def queue_names(self) -> list[str]:
        return await (await self.connect()).queue_names()

    async def counts(self, queue: str) -> QueueCounts:
        return await (await self.connect()).counts(queue)

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        return await (await self.connect()).list_jobs(
            queue, state, tenant=tenant, limit=limit, cursor=cursor
        )

    async def pause(self, queue: str) -> None:
        """Stop workers claiming from `queue`; producers keep enqueueing."""
        await (await self.connect()).pause(check_queue(queue, error=InvalidJob))

    async def resume(self, queue: str) -> None:
        """Let workers claim from `queue` again."""
        await (await self.connect()).resume(check_queue(queue, error=InvalidJob))

    async def retry_job(self, job_id: str) -> Job:
        """Send a failed or cancelled job back to pending with a fresh attempt budget."""
        return await (await self.connect()).retry_job(job_id)

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a scheduled, pending or running job (a running one's lease is revoked)."""
        return await (await self.connect()).cancel_job(job_id)

    async def promote_job(self, job_id: str) -> Job:
        """Run a scheduled (delayed or retry-waiting) job now."""
        return await (await self.connect()).promote_job(job_id)

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every failed (or cancelled) job of `queue`; returns how many."""
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidJob(f"retry-all works on failed or cancelled jobs, not {state.value}")
        return await (await self.connect()).retry_all(queue, state)

    async def clean(
        self, queue: str, state: JobState, older_than: float, limit: int = 10_000
    ) -> int:
        """Delete finished jobs in `state` older than `older_than` seconds; returns how many."""
        if state not in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED):
            raise InvalidJob(
                f"clean removes completed, failed or cancelled jobs, not {state.value}: "
                "cancel live jobs first"
            )
        if older_than < 0 or limit < 1:
            raise InvalidJob("clean needs older_than >= 0 seconds and limit >= 1")
        return await (await self.connect()).clean(queue, state, int(older_than * 1000), limit)

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue`, in every state. Irreversible."""
        return await (await self.connect()).purge(queue)

    async def workers(self) -> list[dict[str, Any]]:
        """Workers alive now, with their queues, in-flight counts and last heartbeat."""
        return await (await self.connect()).workers()

    async def events(
        self, queues: Sequence[str], *, since: dict[str, str] | None = None, block_ms: int = 1000
    ) -> AsyncIterator[Event]:
        """Yield state-change events of `queues` as they happen, across processes.

        Args:
            since: queue -> last event id seen; absent queues start from now.
        """
        engine = await self.connect()
        # Pin "now" for queues without a position, so nothing between reads is skipped.
        cursor = {**(await engine.last_event_ids(queues)), **(since or {})}
        while True:
            batch = await engine.read_events(queues, since=cursor, count=500, block_ms=block_ms)
            for event in batch:
                cursor[event.queue] = event.id
                yield event

    def asgi(self, **options: Any) -> Any:
        """The HTTP API for this app as an ASGI application (a FastAPI instance), to mount
        in your own server: `starlette_app.mount("/queue", app.asgi())`.

        Args:
            **options: passed to `conveyor.api.create_api` (`tokens`, `metrics_prefix`,
                `ws_buffer`); tokens default to the `CONVEYOR_API_*` settings.
        """
        from .api import create_api

        return create_api(self, **options)

    # --- schedules ---------------------------------------------------------------------
    @overload
    def cron(
        self,
        expr: str,
        *,
        task: str,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec: ...

    @overload
    def cron(
        self,
        expr: str,
        *,
        task: None = None,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> Callable[[H], H]: ...

    def cron(
        self,
        expr: str,
        *,
        task: str | None = None,
        payload: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec | Callable[[H], H]:
        """Enqueue a job on a cron schedule (run by `conveyor scheduler`).

        A plain call with `task=` registers the schedule; without `task=` it decorates a
        handler (registered as a task if it is not one yet) and schedules that task.

        Args:
            expr: cron expression, e.g. `"0 3 * * *"` (03:00 daily); see
                `conveyor.schedules` for the DST rule.
            task: task name of the jobs.
            payload: JSON object for every job.
            timezone: IANA timezone the expression is read in (default UTC).
            name: schedule name (default `"<task>@<expr>"`); must be unique.
            queue: queue of the jobs (default: the task's queue).
            missed: occurrences missed while no scheduler ran: `"skip"` or `"run_once"`.
            **options: enqueue options for every job: priority, max_attempts, backoff,
                timeout, tenant, dedupe_key.

        Returns:
            The schedule (plain call) or the decorator.

        Raises:
            ConfigError: an invalid expression, timezone, option or payload, or the name
                is taken; the message names the fix.
        """

        def make(task_name: str) -> ScheduleSpec:
            return cron_schedule(
                expr,
                task=task_name,
                name=name,
                timezone=timezone,
                payload=None if payload is None else dict(payload),
                queue=queue,
                missed=missed,
                options=options,
            )

        return self._code_schedule(task, make)

    @overload
    def every(
        self,
        interval: timedelta | float,
        *,
        task: str,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec: ...

    @overload
    def every(
        self,
        interval: timedelta | float,
        *,
        task: None = None,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> Callable[[H], H]: ...

    def every(
        self,
        interval: timedelta | float,
        *,
        task: str | None = None,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        queue: str | None = None,
        missed: str = "skip",
        **options: Any,
    ) -> ScheduleSpec | Callable[[H], H]:
        """Enqueue a job every `interval` (at multiples of it since the epoch, UTC).

        Args:
            interval: a timedelta or seconds (at least 1 s).
            task, payload, name, queue, missed, **options: as for `cron` (default name
                `"<task>@every <interval>"`).

        Returns:
            The schedule (plain call with `task=`) or a decorator.

        Raises:
            ConfigError: an invalid interval, option or payload, or the name is taken.
        """

        def make(task_name: str) -> ScheduleSpec:
            return every_schedule(
                interval,
                task=task_name,
                name=name,
                payload=None if payload is None else dict(payload),
                queue=queue,
                missed=missed,
                options=options,
            )

        return self._code_schedule(task, make)

    def _code_schedule(
        self, task: str | None, make: Callable[[str], ScheduleSpec]
    ) -> ScheduleSpec | Callable[[H], H]:
        """Register `make(task)` now, or return a decorator that finds the task name."""
        if task is not None:
            return self._register_schedule(make(task))

        def decorate(fn: H) -> H:
            found = [t.name for t in self.tasks.values() if t.fn is fn]
            task_name = found[0] if found else f"{fn.__module__}.{fn.__qualname__}"
            if not found:
                self.task(task_name)(fn)
            self._register_schedule(make(task_name))
            return fn

        return decorate

    def _register_schedule(self, spec: ScheduleSpec) -> ScheduleSpec:
        self.check_schedule(spec)
        if spec.name in self.schedules and self.schedules[spec.name] != spec:
            raise ConfigError(
                f"schedule {spec.name!r} is defined twice: pass name= to tell them apart"
            )
        self.schedules[spec.name] = spec
        return spec

    def check_schedule(self, spec: ScheduleSpec) -> None:
        """Validate the job a schedule would enqueue (payload, queue, options) once, now,
        with the same checks as `enqueue`, so a bad schedule fails at start-up.

        Raises:
            ConfigError: the job would be rejected; the message names the schedule.
        """
        registered = self.tasks.get(spec.task)
        queue = spec.queue or (registered.queue if registered else self.default_queue)
        try:
            self.build(spec.task, spec.payload, queue=queue, **spec.options)
        except InvalidJob as exc:
            raise ConfigError(f"schedule {spec.name!r}: {exc}") from exc

    async def add_schedule(self, spec: ScheduleSpec) -> None:
        """Store a runtime schedule (or update one); the leading scheduler picks it up
        within a second.

        Raises:
            ConfigError: the schedule is invalid, or its name belongs to a code-defined one.
        """
        self.check_schedule(spec)
        engine = await self.connect()
        await self._stored_schedule(spec.name, allow_missing=True, action="replace")
        await engine.put_schedule(spec.name, spec.to_json(), "runtime")

    async def remove_schedule(self, name: str) -> None:
        """Delete a runtime schedule.

        Raises:
            ConfigError: no such schedule, or it is defined in code.
        """
        await self._stored_schedule(name, action="remove")
        await (await self.connect()).delete_schedule(name)

    async def pause_schedule(self, name: str, paused: bool = True) -> None:
        """Stop (or, with `paused=False`, restart) a schedule's occurrences. Occurrences
        that fall while it is paused are never run.

        Raises:
            ConfigError: no such schedule.
        """
        if not await (await self.connect()).set_schedule_paused(name, paused):
            raise ConfigError(_no_schedule(name))

    async def list_schedules(self, now: float | None = None) -> list[ScheduleInfo]:
        """Every stored schedule (code-defined ones appear once a scheduler has started),
        with its next and last run.

        Args:
            now: epoch seconds (default: the app's clock).
        """
        moment = self.clock.now() if now is None else now
        stored = await (await self.connect()).schedules()
        return [schedule_info(s, round(moment * 1000)) for s in stored]

    async def scheduler_leader(self) -> LeaseInfo | None:
        """Which scheduler process leads now (its id and lease time left), if any."""
        return await (await self.connect()).lease_info(LEADER_LEASE)

    async def _stored_schedule(
        self, name: str, *, action: str, allow_missing: bool = False
    ) -> None:
        """Refuse to `action` a schedule that is missing or defined in code (the scheduler
        would register it again at its next start)."""
        found = {s.name: s for s in await (await self.connect()).schedules()}.get(name)
        if found is None and not allow_missing:
            raise ConfigError(_no_schedule(name))
        if found is not None and found.source == "code":
            raise ConfigError(
                f"schedule {name!r} is defined in the app's code, so the scheduler would "
                f"bring it back: change the code to {action} it, or pause it"
            )


class _SyncBridge:
    """Runs the async API on a private event loop thread, with its own engine.

    Engine connections belong to the loop that made them, so sync callers get a
    separate app instance sharing the task registry.
    """

    def __init__(self, app: Conveyor) -> None:
        self.pid = os.getpid()  # a bridge serves only the process that built it
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="conveyor-sync", daemon=True
        )
        self._thread.start()
        self._app = Conveyor(
            app.url,
            default_queue=app.default_queue,
            max_payload_bytes=app.max_payload_bytes,
            clock=app.clock,
        )
        self._app.tasks = app.tasks

    def run(self, call: Callable[[Conveyor], Coroutine[Any, Any, R]]) -> R:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "enqueue_sync was called inside a running event loop: use `await app.enqueue`"
            )
        future: Future[R] = asyncio.run_coroutine_threadsafe(call(self._app), self._loop)
        return future.result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._app.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# Bridges a forked child inherited from its parent. Kept, never used: letting the garbage
# collector finalise them would close sockets and files the parent still uses.
_abandoned: list[_SyncBridge] = []


def _no_schedule(name: str) -> str:
    return f"no schedule named {name!r}: `conveyor schedules list` shows the names"


def check_queue(name: str, *, error: type[Exception] = ConfigError) -> str:
    """Return `name` if it is a valid queue name, else raise `error` naming the rule."""
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise error(f"queue name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.'")
    return name


def _check_attempts(value: Any, *, error: type[Exception] = ConfigError) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
        raise error(f"max_attempts={value!r} is invalid: use an integer from 1 to 1000")


def _check_timeout(value: Any, *, error: type[Exception] = ConfigError) -> None:
    if value is not None and (not isinstance(value, int | float) or value <= 0):
        raise error(f"timeout={value!r} is invalid: use seconds > 0, or None for no limit")


def _check_label(field: str, value: Any, max_len: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidJob(f"{field}={value!r} is invalid: use a string of 1-{max_len} characters")
    return value


def _due(delay: Any, run_at: Any) -> tuple[int, int | None]:
    """Convert `delay` / `run_at` to storage milliseconds (the engine's clock adds now)."""
    if delay is not None and run_at is not None:
        raise InvalidJob("pass delay= or run_at=, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidJob(f"run_at={run_at!r} is invalid: pass a datetime")
        return 0, int(run_at.timestamp() * 1000)
    if delay is None:
        return 0, None
    if isinstance(delay, timedelta):
        delay = delay.total_seconds()
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
        raise InvalidJob(f"delay={delay!r} is invalid: use seconds >= 0 or a timedelta")
    return int(delay * 1000), None
