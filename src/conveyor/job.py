"""The job: its states, what a handler sees, and how it is stored.

Every engine stores a job as flat fields (strings or numbers, times in milliseconds)
and turns them back into a `Job` with `decode_job`, so decoding rules and the
"malformed stored data" error live in one place.
"""

from __future__ import annotations

import os
import re
from base64 import urlsafe_b64encode
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic

import orjson
from typing_extensions import TypeVar

from .errors import ConfigError, InvalidPayload, MalformedJob, PayloadTooLarge
from .payloads import result_json, strict_dumps


class JobState(StrEnum):
    """Where a job is in its life. `failed` is the dead-letter state."""

    SCHEDULED = "scheduled"  # delayed, or waiting for its next retry
    WAITING = "waiting-children"  # a flow's parent: runs when its children have finished
    PENDING = "pending"  # ready to be claimed (also while its queue is paused)
    RUNNING = "running"  # claimed by a worker under a lease
    COMPLETED = "completed"
    FAILED = "failed"  # retries exhausted or unrecoverable: the dead-letter state
    CANCELLED = "cancelled"


# Live states hold their dedupe key; a waiting parent is live (a retried flow() call
# with the same key finds it).
ACTIVE_STATES = (JobState.SCHEDULED, JobState.PENDING, JobState.RUNNING, JobState.WAITING)
FINISHED_STATES = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)

# \Z, not $: `$` also matches before a trailing newline, so "emails\n" would pass.
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}\Z")

# What a stored job without a `max_attempts` has (a job's own default too). The Redis
# engine leaves the field out when it equals this, and `attempt` / `priority` when 0
# (less memory per job); its scripts read the same number (`lifecycle.lua_prelude`).
DEFAULT_MAX_ATTEMPTS = 1
MIN_PRIORITY, MAX_PRIORITY = -100, 100


@dataclass(slots=True)
class AttemptError:
    """Why one attempt failed."""

    attempt: int
    type: str
    message: str
    traceback: str | None = None
    at: float = 0.0  # wall-clock seconds

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "attempt": self.attempt,
                "type": self.type,
                "message": self.message,
                "traceback": self.traceback,
                "at": self.at,
            }
        ).decode()

    @classmethod
    def from_obj(cls, obj: Mapping[str, Any]) -> AttemptError:
        return cls(
            attempt=int(obj.get("attempt", 0)),
            type=str(obj.get("type", "Error")),
            message=str(obj.get("message", "")),
            traceback=obj.get("traceback"),
            at=float(obj.get("at", 0.0)),
        )


ProgressReporter = Callable[["Job[Any]", Any], Awaitable[None]]


# The payload's type: a dict, or the task's pydantic model in its handler (`Job[Email]`).
P = TypeVar("P", default=dict[str, Any])


@dataclass(slots=True, eq=False)
class Job(Generic[P]):
    """A job as a handler receives it and as `app.get_job` returns it.

    Times are wall-clock seconds (floats) or `None` when the event has not happened.
    A typed task's handler gets `Job[Model]`, whose `payload` is the model instance;
    everywhere else `payload` is the stored JSON object (a dict).
    """

    id: str
    queue: str
    task: str
    payload: P
    state: JobState
    attempt: int = 0  # attempts started so far (counted when claimed)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    tenant: str | None = None
    dedupe_key: str | None = None
    timeout: float | None = None
    backoff: dict[str, Any] | None = None  # stored policy spec; None = task default
    created_at: float = 0.0
    scheduled_at: float | None = None  # when a scheduled job becomes due
    started_at: float | None = None
    finished_at: float | None = None
    progress_value: Any = None  # last value reported with `await job.progress(...)`
    result: Any = None
    errors: list[AttemptError] = field(default_factory=list)
    token: str | None = None  # the lease token, set only on a claimed job
    worker: str | None = None
    decode_error: str | None = None  # set by the engine when stored data was malformed
    _reporter: ProgressReporter | None = field(default=None, repr=False)
    _app: Any = field(default=None, repr=False)  # the Conveyor that returned it, for wait()

    @property
    def last_error(self) -> AttemptError | None:
        """The error of the most recent failed attempt, if any."""
        return self.errors[-1] if self.errors else None

    async def progress(self, value: Any) -> None:
        """Record progress (a percentage or a JSON dict) from inside a handler.

        Stored on the job and published as a `progress` event, so API clients and
        the dashboard see it live.
        """
        self.progress_value = value
        if self._reporter is not None:
            await self._reporter(self, value)

    async def wait(self, timeout: float | None = None) -> Any:
        """Wait until the job is finished and return its result (`app.wait`).

        Args:
            timeout: seconds to wait at most; `None` waits as long as it takes.

        Returns:
            What the handler returned, as stored (JSON).

        Raises:
            JobFailed: the job failed; carries the last error and its traceback text.
            JobCancelled: the job was cancelled.
            TimeoutError: it is not finished after `timeout` seconds.
            ConfigError: this job object did not come from an app (use `app.wait(id)`).
        """
        return await self._owner().wait(self.id, timeout)

    async def children_results(self) -> dict[str, Any]:
        """The results of this flow parent's children, by child id (`app.children_results`).

        A child that failed under the `ignore` policy appears as its `ChildResult` with
        the error; a `continue` child's failure is left out (it does not count).
        """
        results: dict[str, Any] = await self._owner().children_results(self.id)
        return results

    async def child_values(self) -> list[Any]:
        """What each counted child returned, in the order the children were given: the
        previous step's result in a chain (`[0]`), every result in a group's callback."""
        values: list[Any] = await self._owner().child_values(self.id)
        return values

    def children_results_sync(self) -> dict[str, Any]:
        """`children_results` for synchronous code (a sync handler)."""
        results: dict[str, Any] = self._owner().children_results_sync(self.id)
        return results

    def child_values_sync(self) -> list[Any]:
        """`child_values` for synchronous code (a sync handler)."""
        values: list[Any] = self._owner().child_values_sync(self.id)
        return values

    def wait_sync(self, timeout: float | None = None) -> Any:
        """`wait` for synchronous code; same returns and errors."""
        return self._owner().wait_sync(self.id, timeout)

    def _owner(self) -> Any:
        if self._app is None:
            raise ConfigError(
                f"job {self.id} was not returned by an app's enqueue or get_job: "
                "call `await app.wait(job_id)` instead"
            )
        return self._app

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (CLI, HTTP API)."""
        return {
            "id": self.id,
            "queue": self.queue,
            "task": self.task,
            "state": self.state.value,
            "payload": self.payload,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "tenant": self.tenant,
            "dedupe_key": self.dedupe_key,
            "timeout": self.timeout,
            "backoff": self.backoff,
            "created_at": self.created_at,
            "scheduled_at": self.scheduled_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "progress": self.progress_value,
            "result": self.result,
            "errors": [
                {
                    "attempt": e.attempt,
                    "type": e.type,
                    "message": e.message,
                    "traceback": e.traceback,
                    "at": e.at,
                }
                for e in self.errors
            ],
            "worker": self.worker,
        }


@dataclass(slots=True)
class NewJob:
    """What the app hands an engine to enqueue (already validated and encoded)."""

    id: str
    queue: str
    task: str
    payload_json: str
    max_attempts: int
    priority: int = 0
    tenant: str | None = None
    dedupe_key: str | None = None
    timeout: float | None = None
    backoff_json: str | None = None
    delay_ms: int = 0  # relative to the engine's clock
    run_at_ms: int | None = None  # absolute wall time; wins over delay_ms


@dataclass(slots=True)
class EnqueueResult:
    """The job an enqueue produced, or the live job a dedupe key pointed at."""

    id: str
    created: bool
    state: JobState


def new_job_id(queue: str) -> str:
    """An opaque id, unique across queues.

    The queue is part of the id so an engine can find a job from its id alone
    (on Redis Cluster every key of a queue lives in that queue's hash slot).
    """
    # 128 random bits, like uuid4 but without building a UUID object (4x cheaper), in
    # URL-safe base64 (22 characters, not 32 in hex): the id is stored in the job's key,
    # in every index that holds the job and in its events, so on Redis each character
    # is paid several times per job (about 28 B per pending job; bench/RESULTS.md).
    return f"{queue}:{urlsafe_b64encode(os.urandom(16)).rstrip(b'=').decode()}"


def new_id_suffixes(count: int) -> list[str]:
    """The random parts of `count` new job ids (`f"{queue}:{suffix}"`, as `new_job_id`
    makes them), for a bulk enqueue: one `urandom` and one base64 call for all of them
    instead of one each (about 1 us per job less).

    Each suffix is 22 URL-safe base64 characters, every one of them random (132 bits;
    `new_job_id`'s last character carries 4 of its 128): the same length and alphabet.
    """
    # 3 bytes make 4 characters, so 3 * ceil(22n / 4) bytes give at least 22n of them
    # and no padding.
    text = urlsafe_b64encode(os.urandom(3 * -(-22 * count // 4))).decode()
    return [text[k : k + 22] for k in range(0, 22 * count, 22)]


def queue_of(job_id: str) -> str:
    """The queue a job id belongs to (engines only; ids are opaque to users)."""
    queue, sep, _ = job_id.rpartition(":")
    return queue if sep else ""


def encode_payload(payload: Any, limit_bytes: int) -> str:
    """Encode a payload as strict JSON text, enforcing type and size.

    Raises:
        InvalidPayload: not a JSON object, or it holds something JSON cannot carry
            unchanged (NaN, a datetime, a set, a non-string key, ...).
        PayloadTooLarge: the encoded form is larger than `limit_bytes`.
    """
    if not isinstance(payload, dict):
        raise InvalidPayload(
            f"payload must be a JSON object (a dict), got {type(payload).__name__}: "
            "wrap the value, e.g. {'value': ...}"
        )
    try:
        raw = strict_dumps(payload)
    except ValueError as exc:
        raise InvalidPayload(
            f"payload is not strict JSON ({exc}); pass only dicts with string keys, lists, "
            "strings, finite numbers, booleans and None (Conveyor never pickles)"
        ) from None
    if len(raw) > limit_bytes:
        raise PayloadTooLarge(
            f"payload is {len(raw)} bytes, over the {limit_bytes}-byte limit: store large "
            "data elsewhere and pass a reference, or raise max_payload_bytes"
        )
    return raw.decode()


def encode_result(result: Any) -> str:
    """Encode a handler's return value (a pydantic model as its JSON).

    Raises:
        InvalidResult: the value is not JSON; the message says what was wrong.
    """
    return result_json(result)


# These run ~20 times per claimed job: kept minimal (the claim path is CPU-bound).
def _opt_float_ms(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return int(value) / 1000.0


def _opt_str(value: Any) -> str | None:
    if not value:  # None, "" or b""
        return None
    if type(value) is str:
        return value
    return value.decode() if isinstance(value, bytes) else str(value)


def _json_or_none(value: Any) -> Any:
    if not value:
        return None
    return orjson.loads(value)


_STATES = {state.value: state for state in JobState}


def _state(value: Any) -> JobState:
    state = _STATES.get(value)
    return state if state is not None else JobState(str(_opt_str(value)))


def decode_errors(value: Any) -> list[AttemptError]:
    """Errors are stored as a JSON array, or (Redis) as a list of JSON objects."""
    if not value:
        return []
    items = orjson.loads(value) if isinstance(value, str | bytes) else value
    out = []
    for item in items:
        obj = orjson.loads(item) if isinstance(item, str | bytes) else item
        out.append(AttemptError.from_obj(obj))
    out.sort(key=lambda e: e.attempt)
    return out


def decode_job(fields: Mapping[str, Any]) -> Job:
    """Build a `Job` from stored fields.

    Raises:
        MalformedJob: a field is missing or cannot be decoded; the message says which.
    """
    try:
        job_id = _opt_str(fields["id"])
        if not job_id:
            raise ValueError("empty id")
    except (KeyError, ValueError) as exc:
        raise MalformedJob(f"stored job has no id ({exc}); it cannot be decoded") from exc
    try:
        payload = orjson.loads(fields["payload"])
        if not isinstance(payload, dict):
            raise TypeError(f"payload is a {type(payload).__name__}, not an object")
        get = fields.get
        return Job(
            id=job_id,
            queue=str(_opt_str(fields["queue"])),
            task=str(_opt_str(fields["task"])),
            payload=payload,
            state=_state(fields["state"]),
            attempt=int(get("attempt") or 0),
            max_attempts=int(get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
            priority=int(get("priority") or 0),
            tenant=_opt_str(get("tenant")),
            dedupe_key=_opt_str(get("dedupe_key")),
            timeout=_opt_float_ms(get("timeout_ms")),
            backoff=_json_or_none(get("backoff")),
            created_at=_opt_float_ms(get("created_ms")) or 0.0,
            scheduled_at=_opt_float_ms(get("scheduled_ms")),
            started_at=_opt_float_ms(get("started_ms")),
            finished_at=_opt_float_ms(get("finished_ms")),
            progress_value=_json_or_none(get("progress")),
            result=_json_or_none(get("result")),
            errors=decode_errors(get("errors")),
            token=_opt_str(get("token")),
            worker=_opt_str(get("worker")),
        )
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise MalformedJob(
            f"stored job {job_id!r} is malformed ({type(exc).__name__}: {exc}); it was "
            "written by something other than this Conveyor version, or corrupted"
        ) from exc


def decode_lenient(fields: Mapping[str, Any]) -> Job:
    """Decode a job for claims and listings; malformed data becomes `decode_error`.

    A worker still holds the lease on a malformed job it claimed, so it can fail it
    with the reason instead of leaving it to expire again and again; a listing shows
    the broken job instead of failing as a whole.
    """
    try:
        return decode_job(fields)
    except MalformedJob as exc:
        try:
            state = JobState(str(_opt_str(fields.get("state"))))
        except ValueError:
            state = JobState.RUNNING
        try:
            errors = decode_errors(fields.get("errors"))
        except (TypeError, ValueError, orjson.JSONDecodeError):
            errors = []
        raw_attempt = str(_opt_str(fields.get("attempt")) or "1")
        return Job(
            id=str(_opt_str(fields.get("id")) or "?"),
            queue=str(_opt_str(fields.get("queue")) or ""),
            task=str(_opt_str(fields.get("task")) or ""),
            payload={},
            state=state,
            attempt=int(raw_attempt) if raw_attempt.isdigit() else 1,
            max_attempts=1,
            errors=errors,
            token=_opt_str(fields.get("token")),
            decode_error=str(exc),
        )
