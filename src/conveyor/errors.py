"""Every error Conveyor raises, in one shallow tree.

```
ConveyorError                     root: catch this to catch everything Conveyor raises
├── ConfigError                   a setting or argument is invalid (raised at start-up)
├── EngineUnavailable             the engine (Redis, SQLite file) cannot be reached
│   └── SchemaTooNew              the SQLite file was migrated by a newer Conveyor
├── JobNotFound                   no job has that id
├── InvalidJob                    what a producer asked to enqueue is wrong
│   ├── UnknownTask               task not registered here and no queue given
│   ├── InvalidPayload            payload is not JSON-serialisable (never pickled)
│   └── PayloadTooLarge           payload exceeds the configured size limit
├── MalformedJob                  stored job data cannot be decoded
└── InvalidState                  operation does not apply to the job's current state
```

Control flow raised *by handlers* is not an error and lives here too: `Retry`
(retry after a delay), `Unrecoverable` (fail now, no more attempts), `RateLimited`
(a dependency said "not now": run the job again later without spending an attempt) and
its subclass `BreakerOpen` (raised by an open circuit breaker, `conveyor.breaker`).
"""

from __future__ import annotations


class ConveyorError(Exception):
    """Root of every error raised by Conveyor."""


class ConfigError(ConveyorError):
    """A setting or argument is invalid; the message names the fix."""


class EngineUnavailable(ConveyorError):
    """The engine could not be reached (network, file permissions, server down)."""


class SchemaTooNew(EngineUnavailable):
    """The SQLite file carries schema migrations this Conveyor does not know: a newer
    Conveyor upgraded it. Upgrade Conveyor (or use another file); the file is untouched."""


class JobNotFound(ConveyorError):
    """No job exists with the given id."""


class InvalidJob(ConveyorError):
    """A job a producer asked to enqueue is invalid; nothing was enqueued."""


class UnknownTask(InvalidJob):
    """The task is not registered in this process and no `queue=` was given."""


class InvalidPayload(InvalidJob):
    """The payload (or result) is not JSON-serialisable."""


class PayloadTooLarge(InvalidJob):
    """The encoded payload is larger than `max_payload_bytes`."""


class MalformedJob(ConveyorError):
    """Stored job data could not be decoded (corrupted or written by something else)."""


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
