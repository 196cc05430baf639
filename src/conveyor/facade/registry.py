"""The app's registry: tasks, worker hooks, circuit breakers and the queue limits
declared in code. Nothing here talks to the engine: workers read these at start."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from .. import backoff as backoff_mod
from ..breaker import CircuitBreaker
from ..errors import ConfigError
from ..job import Job
from ..limits import QueueLimits
from ..partitions import split_limits
from ..payloads import payload_model
from ..task import ISOLATIONS, Handler, Isolation, Task
from .checks import check_attempts, check_queue, check_timeout
from .core import AppCore, Hook, JobHook

H = TypeVar("H", bound=Handler)
F = TypeVar("F", bound=Hook)
G = TypeVar("G", bound=JobHook)
JOB_HOOK_KINDS = ("started", "completed", "failed", "retried", "released", "deferred")


class Registry(AppCore):
    """What a worker of this app runs: tasks, hooks, breakers and code-defined limits."""

    def task(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        max_attempts: int = 3,
        backoff: backoff_mod.BackoffLike = None,
        timeout: float | None = None,
        payload: type[BaseModel] | None = None,
        isolation: Isolation = None,
        partitions: int | None = None,
    ) -> Callable[[H], H]:
        """Register a handler as a task.

        Args:
            name: task name (default: the function's `module.qualname`).
            queue: queue its jobs go to (default: the app's default queue).
            max_attempts: attempts before the job is failed (>= 1).
            backoff: delays between attempts: `[1, 5, 30]`, a number, `"exponential"`,
                or a policy from `conveyor.backoff`.
            timeout: seconds an attempt may run; over it the attempt fails.
            payload: a pydantic model the payload must fit (also found from a
                `job: Job[Model]` annotation); the handler gets `job.payload` as an
                instance of it. See `conveyor.payloads`.
            isolation: `"process"` runs every attempt in a child process of the
                worker's process pool, which a hard timeout, a cancellation or a crash
                kills without harming the worker (see `conveyor.worker.isolation`).
                None (the default) follows the worker's `--pool`.
            partitions: store `queue` as this many partitions (see `app.limits`).

        Raises:
            ConfigError: an option is invalid or the name is already registered.
        """
        queue = check_queue(queue or self.default_queue)
        check_attempts(max_attempts)
        policy = backoff_mod.coerce(backoff)
        check_timeout(timeout)
        if isolation not in ISOLATIONS:
            raise ConfigError(
                f"isolation={isolation!r} is invalid: use isolation='process' to run the "
                "task in a child process, or leave it out to follow the worker's --pool"
            )
        if partitions is not None:
            self.partitions.declare(queue, partitions)

        def register(fn: H) -> H:
            task_name = name or f"{fn.__module__}.{fn.__qualname__}"
            if task_name in self.tasks and self.tasks[task_name].fn is not fn:
                raise ConfigError(f"task {task_name!r} is registered twice: pick another name")
            model = payload_model(fn, payload, Job)
            self.tasks[task_name] = Task(
                task_name,
                fn,
                queue,
                max_attempts,
                policy,
                timeout,
                payload_model=model,
                isolation=isolation,
            )
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
        partitions: int | None = None,
        events: bool = True,
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
            partitions: store the queue as this many partitions, spread over a Redis
                Cluster's shards so one busy queue can use all of them (correct, but
                not needed, on other engines). `concurrency` and `rate` are then split
                across partitions; see `conveyor.partitions` for routing and dedupe.
            events: False: the queue has no event log (no `enqueued`, `started`,
                `completed`... written; Redis saves one XADD per enqueue and per
                start and outcome). `job.wait()` then polls the job, and the dashboard
                and WebSocket say the queue is not streamed. Every process must declare
                it (import the same app); it holds from the next call, also when
                declared after the app connected.

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
        check_queue(queue)
        if not isinstance(events, bool):
            raise ConfigError(f"events={events!r} is invalid: use True or False")
        if partitions is not None:
            self.partitions.declare(queue, partitions)
            split_limits(limits, partitions)  # refuse a total a partition can't share
        # Rule 7; its partitions follow (lifecycle.writes_events).
        (self.unstreamed.discard if events else self.unstreamed.add)(queue)
        if partitions is not None and limits.empty:  # only the layout: keep stored limits
            return limits
        self.queue_limits[queue] = limits
        return limits

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
