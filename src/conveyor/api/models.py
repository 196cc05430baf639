"""Request and response bodies: pydantic at the trust boundary.

Request models forbid unknown fields, so a typo (`"priorty": 5`) is a 422 naming the
field instead of a silently ignored option. Response models document what
`Job.to_dict`, `status.overview_row` and `status.status_document` return (the routes
return those dicts as they are; `tests/acceptance/test_api.py` checks the field sets
match, so the schema cannot drift from the code).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from ..job import MAX_PRIORITY, MIN_PRIORITY, QUEUE_NAME

# Ten years: anything later is a unit mistake (milliseconds passed as seconds), and the
# bound keeps `delay * 1000` inside the engines' 64-bit integers.
MAX_DELAY_SECONDS = 10 * 365 * 86_400.0
# Pydantic's (Rust) regexes have no \Z, and their `$` is already the end of the text.
QUEUE_PATTERN = QUEUE_NAME.pattern.removesuffix("\\Z") + "$"

JobStateName = Literal[
    "scheduled", "pending", "running", "completed", "failed", "cancelled", "waiting-children"
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnqueueRequest(_Request):
    """`POST /jobs`: one job to enqueue."""

    task: str = Field(min_length=1, max_length=200, description="registered task name")
    queue: str | None = Field(
        None,
        pattern=QUEUE_PATTERN,
        description="queue; required when the API process does not know the task",
    )
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="a JSON object; for a task with a payload model, the request body's "
        "`anyOf` has a variant per such task with its payload schema (422 names each bad "
        "field as `payload.<field>`)",
    )
    delay: float | None = Field(
        None, ge=0, le=MAX_DELAY_SECONDS, description="seconds to wait before it is due"
    )
    run_at: AwareDatetime | None = Field(
        None, description="when it is due (RFC 3339 with offset); not with `delay`"
    )
    priority: int = Field(
        0, ge=MIN_PRIORITY, le=MAX_PRIORITY, strict=True, description="higher runs first"
    )
    tenant: str | None = Field(
        None, min_length=1, max_length=128, description="tenant (forced for tenant tokens)"
    )
    dedupe_key: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="while a job with this key is active in the queue, return it instead",
    )
    max_attempts: int | None = Field(None, ge=1, le=1000, strict=True)
    timeout: float | None = Field(
        None, gt=0, le=MAX_DELAY_SECONDS, description="seconds an attempt may run"
    )


class FlowItem(EnqueueRequest):
    """One child of a flow: a job like `POST /jobs`, with what its failure does to its
    parent and its own children."""

    on_failure: Literal["fail_parent", "ignore", "continue"] | None = Field(
        None,
        description="fail_parent (default): the parent fails and the rest is cancelled; "
        "ignore: the parent runs and sees the failure; continue: the failure does not count",
    )
    children: list[FlowItem] = Field(default_factory=list, max_length=10_000)


class FlowRequest(_Request):
    """`POST /flows`: a parent job and its children (to any depth), stored at once; the
    parent runs when every child has finished."""

    parent: EnqueueRequest
    children: list[FlowItem] = Field(min_length=1, max_length=10_000)


class CleanRequest(_Request):
    """`POST /queues/{queue}/clean`: delete old finished jobs."""

    # Which states clean accepts is lifecycle's rule, checked once by the app facade
    # (409 InvalidState otherwise); the model only checks that it names a state.
    state: JobStateName = "completed"
    older_than: float = Field(
        0, ge=0, le=MAX_DELAY_SECONDS, description="seconds since the job finished"
    )
    limit: int = Field(10_000, ge=1, le=1_000_000, strict=True)


class RetryAllRequest(_Request):
    """`POST /queues/{queue}/retry-all`: which dead jobs to send back."""

    # As for clean: the facade applies lifecycle's rule (failed or cancelled).
    state: JobStateName = "failed"


class AttemptErrorOut(BaseModel):
    """Why one attempt failed."""

    attempt: int
    type: str
    message: str
    traceback: str | None
    at: float


class JobOut(BaseModel):
    """A job, as `Job.to_dict` renders it (times are Unix seconds)."""

    id: str
    queue: str
    task: str
    state: JobStateName
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    priority: int
    tenant: str | None
    dedupe_key: str | None
    timeout: float | None
    backoff: dict[str, Any] | None
    created_at: float
    scheduled_at: float | None
    started_at: float | None
    finished_at: float | None
    progress: Any
    result: Any
    errors: list[AttemptErrorOut]
    worker: str | None


class PolicyOut(BaseModel):
    """What a worker applies to a job (`status.policy_in_effect`)."""

    timeout_seconds: float | None = Field(description="null: no limit, or unknown here")
    timeout_from: Literal["job", "task", "unknown"]
    backoff: dict[str, Any] | None
    backoff_text: str | None = Field(description='e.g. "exponential 1s x2 up to 3600s"')
    backoff_from: Literal["job", "task", "unknown"]
    max_attempts: int


class JobDetailOut(JobOut):
    """`GET /jobs/{id}`: the job and the policy in effect for it. `unknown` sources mean
    the API's app does not register the task (start `conveyor api` with the app)."""

    in_effect: PolicyOut


class JobPageOut(BaseModel):
    """One page of `GET /jobs`; pass `next_cursor` back as `cursor` for the next."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(description="null on the last page")


class QueueOverviewOut(BaseModel):
    """One queue's depth per state and recent throughput (`status.overview_row`)."""

    queue: str
    scheduled: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    waiting_children: int = Field(
        0, alias="waiting-children", description="flow parents waiting for their children"
    )
    paused: bool
    oldest_pending_created_at: float | None = Field(
        description="when the oldest pending job was enqueued (Unix seconds); null if none"
    )
    oldest_pending_age_seconds: float | None = Field(
        description="how long the oldest pending job has waited (seconds); null if none"
    )
    completed_1m: int
    failed_1m: int
    throughput_per_min: int
    limits: dict[str, int | str] = Field(
        description="fleet-wide limits in effect (only those set): concurrency, "
        'tenant_concurrency, rate and tenant_rate ("100/1s")'
    )
    held_back: list[str] = Field(
        description="why pending jobs are not running now (paused, no worker, a limit "
        "reached); empty when nothing holds them back"
    )


class QueuesOut(BaseModel):
    """`GET /queues`."""

    queues: list[QueueOverviewOut]


class PauseOut(BaseModel):
    queue: str
    paused: bool


class CountOut(BaseModel):
    """How many jobs an operation changed."""

    queue: str
    state: str
    count: int


class HealthOut(BaseModel):
    """`GET /health`: the process is alive (always 200), with what it sees of the engine."""

    status: Literal["alive"]
    engine: dict[str, Any]


class LiveOut(BaseModel):
    """`GET /health/live`: the process serves requests (always 200, no engine call)."""

    status: Literal["alive"]


class ReadyOut(BaseModel):
    """`GET /health/ready`: 200 ready, 503 with the reason."""

    status: Literal["ready", "not ready"]
    reason: str


class StatusEngineOut(BaseModel):
    url: str
    status: Literal["ok", "unavailable"]
    latency_ms: float | None
    durable: bool
    server: dict[str, Any] | None = None  # Redis: maxmemory_policy, appendonly, appendfsync
    error: str | None


class StatusOut(BaseModel):
    """`GET /admin/workers/status`: the incident-polling document (`conveyor status`)."""

    generated_at: str
    engine: StatusEngineOut
    queues: list[QueueOverviewOut]
    workers: list[dict[str, Any]]
    totals: dict[str, Any]
