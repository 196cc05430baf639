"""Every error Conveyor raises, in one shallow tree.

```
ConveyorError                     root: catch this to catch everything Conveyor raises
├── ConfigError                   a setting or argument is invalid (raised at start-up)
├── EngineUnavailable             the engine (Redis, SQLite file) cannot serve now: retry
│   ├── EngineFull                Redis reached maxmemory: new jobs refused, workers drain
│   ├── NotReplicated             `?replicas=N`: the enqueue is done but N replicas did
│   │                             not confirm it in time (it may be lost on failover)
│   └── SchemaTooNew              the SQLite file was migrated by a newer Conveyor
├── JobNotFound                   no job has that id
├── InvalidArgument               a read or operator call got a value no engine handed out
│                                 (a forged listing cursor, an event id out of range)
├── InvalidJob                    what a producer asked to enqueue is wrong
│   ├── UnknownTask               task not registered here and no queue given
│   ├── InvalidPayload            payload is not strict JSON, or does not fit the task's model
│   └── PayloadTooLarge           payload exceeds the configured size limit
├── TooManySubscriptions          a live-events subscription is over its process or token cap
├── InvalidResult                 a handler returned something that is not JSON
├── ChildProcessDied              an isolated handler's child process died mid-attempt
├── MalformedJob                  stored job data cannot be decoded
├── JobFailed                     `job.wait()`: the job failed (dead-lettered)
├── JobCancelled                  `job.wait()`: the job was cancelled
└── InvalidState                  operation does not apply to the job's current state
```

Control flow raised *by handlers* is not an error and lives here too: `Retry`
(retry after a delay), `Unrecoverable` (fail now, no more attempts), `RateLimited`
(a dependency said "not now": run the job again later without spending an attempt) and
its subclass `BreakerOpen` (raised by an open circuit breaker, `conveyor.breaker`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class _AttemptError(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def traceback(self) -> str | None: ...


class FinishedJob(Protocol):
    """What `JobFailed` / `JobCancelled` carry: a `conveyor.Job` (described here, not
    imported, because `conveyor.job` builds on this module)."""

    @property
    def id(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def errors(self) -> Sequence[_AttemptError]: ...
    @property
    def last_error(self) -> _AttemptError | None: ...


class ConveyorError(Exception):
    """Root of every error raised by Conveyor."""


class ConfigError(ConveyorError):
    """A setting or argument is invalid; the message names the fix."""


class EngineUnavailable(ConveyorError):
    """The engine could not be reached (network, file permissions, server down)."""


class EngineFull(EngineUnavailable):
    """The engine is out of memory (Redis `maxmemory` under `noeviction`).

    Producers get it instead of a raw OOM reply: nothing was enqueued, retry later. It is
    an `EngineUnavailable`, so code that backs off and retries on that handles it too;
    workers keep finishing and acknowledging the jobs they hold while it lasts.
    """


class NotReplicated(EngineUnavailable):
    """A Redis URL with `?replicas=N` asked for N replicas to confirm a write (`WAIT`), and
    fewer did within `replica_timeout`.

    The write was made on the master (the jobs exist there) but is not known to survive
    its failover. Only an enqueue raises it; a retry with the same dedupe key finds the
    job instead of adding another. (Workers' outcomes log a warning instead, see
    `conveyor.engines.redis.replicas`.)
    """


class SchemaTooNew(EngineUnavailable):
    """The SQLite file (or Postgres schema) carries schema migrations this Conveyor does
    not know: a newer Conveyor upgraded it. Upgrade Conveyor (or use another file or
    schema); it is left untouched."""


class JobNotFound(ConveyorError):
    """No job exists with the given id."""


class InvalidArgument(ConveyorError):
    """An argument of a read or an operation is not one Conveyor could have handed out
    (a forged or foreign listing cursor, an event id out of range); nothing changed."""


class InvalidJob(ConveyorError):
    """A job a producer asked to enqueue is invalid; nothing was enqueued."""


class UnknownTask(InvalidJob):
    """The task is not registered in this process and no `queue=` was given."""


class InvalidPayload(InvalidJob):
    """The payload is not strict JSON, or does not fit the task's payload model.

    Args:
        message: what was wrong and how to fix it.
        fields: for a typed payload, each bad field (dotted path) and what is wrong with
            it (the HTTP API answers 422 with these).
    """

    def __init__(self, message: str, *, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.fields = dict(fields or {})


class InvalidResult(ConveyorError):
    """A handler returned a value that is not JSON; the attempt fails with this error."""


class ChildProcessDied(ConveyorError):
    """The child process running an isolated handler (`isolation="process"`, `--pool
    process`) died during the attempt: a segfault, `os._exit`, the OOM killer. The
    attempt fails with this error (retried as usual); the message says how the child
    died (signal or exit code). The worker lives on and starts a new child."""


class PayloadTooLarge(InvalidJob):
    """The encoded payload is larger than `max_payload_bytes`."""


class TooManySubscriptions(ConveyorError):
    """A live-events subscription was refused: the process, or the caller's token,
    already holds as many as allowed. Close some, or retry later."""


class MalformedJob(ConveyorError):
    """Stored job data could not be decoded (corrupted or written by something else)."""


class JobFailed(ConveyorError):
    """`job.wait()` found the job `failed` (retries exhausted or unrecoverable).

    Attributes:
        job: the failed job (every attempt's error is in `job.errors`).
        error_type, error_message: the last attempt's error type and message.
        traceback: the last attempt's traceback text, when it raised.
    """

    def __init__(self, job: FinishedJob) -> None:
        last = job.last_error
        self.job = job
        self.error_type = last.type if last else "Error"
        self.error_message = last.message if last else "no error was recorded"
        self.traceback = last.traceback if last else None
        super().__init__(
            f"job {job.id} ({job.task}) failed after {job.attempt} attempt(s): "
            f"{self.error_type}: {self.error_message}"
        )


class JobCancelled(ConveyorError):
    """`job.wait()` found the job cancelled.

    Attributes:
        job: the cancelled job.
    """

    def __init__(self, job: FinishedJob) -> None:
        self.job = job
        super().__init__(f"job {job.id} ({job.task}) was cancelled")


class InvalidState(ConveyorError):
    """The operation does not apply to the job in its current state."""


class Retry(Exception):
    """Raise from a handler to retry the job after `delay` seconds.

    The attempt counts against `max_attempts`; when none are left the job fails.

    Args:
        delay: seconds to wait before the next attempt; `None` uses the task's backoff.
        reason: recorded as the attempt's error message.
    """

    def __init__(self, delay: float | None = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Unrecoverable(Exception):
    """Raise from a handler to fail the job at once, skipping any remaining attempts."""


class RateLimited(Exception):
    """Raise from a handler when a dependency said "not now" (HTTP 429, a quota).

    The job is *deferred*: it runs again after `retry_after` seconds and the attempt is
    given back, so no number of rate-limited runs makes it fail. Nothing is added to the
    job's errors (it did not fail); the `deferred` event records `reason` and the delay.

    Args:
        retry_after: seconds to wait (e.g. the provider's Retry-After header); >= 0.
        reason: why, for the event log and the worker's log.

    Raises:
        ValueError: `retry_after` is negative or not a number.
    """

    def __init__(self, retry_after: float = 1.0, reason: str = "rate limited") -> None:
        if (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, int | float)
            or not retry_after >= 0
        ):
            raise ValueError(f"retry_after={retry_after!r}: use seconds >= 0")
        super().__init__(reason)
        self.retry_after = float(retry_after)
        self.reason = reason


class BreakerOpen(RateLimited):
    """Raised by an open circuit breaker instead of calling its dependency.

    A handler that lets it propagate has its job deferred until the breaker half-opens
    (`retry_after`), without spending an attempt.

    Args:
        name: the breaker's name.
        retry_after: seconds until the breaker lets a trial call through.
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(
            max(0.0, retry_after),
            f"circuit breaker {name!r} is open: retry in {max(0.0, retry_after):.1f}s",
        )
        self.name = name
