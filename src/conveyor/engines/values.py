"""Values the engines hand back and forth: outcomes, exchanges, counts, pages, events.

Plain dataclasses with no behaviour beyond `to_dict`, shared by every engine and by
the layers above them (the protocol itself is in `conveyor.engines.base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..job import Job, NewJob
from ..lifecycle import OutcomeKind

__all__ = [
    "EVENT_KINDS",
    "Event",
    "Exchange",
    "FlowLinks",
    "FlowNode",
    "JobPage",
    "LeaseInfo",
    "Outcome",
    "OutcomeKind",
    "QueueCounts",
    "StoredSchedule",
    "Throughput",
]

EVENT_KINDS = (
    "enqueued",
    "started",
    "progress",
    "completed",
    "failed",
    "retried",
    "stalled",
    "released",
    "cancelled",
    "promoted",
    "deferred",
    "ready",  # a flow's parent: its children finished, it is pending now
)


@dataclass(frozen=True, slots=True)
class FlowNode:
    """One job of a flow as the app hands it to `enqueue_flow`.

    Attributes:
        job: the job, built and validated like any enqueued job.
        parent_id: the node it is a child of (None: the flow's root).
        policy: what its failure does to its parent (`lifecycle.FLOW_POLICIES`).
        waits: it has children, so it is stored `waiting-children`.
    """

    job: NewJob
    parent_id: str | None
    policy: str
    waits: bool


@dataclass(frozen=True, slots=True)
class FlowLinks:
    """A job's place in a flow: its parent (and its policy there) and its children, in
    the order they were given. A job outside any flow has neither."""

    job_id: str
    parent_id: str | None = None
    policy: str | None = None
    children: tuple[str, ...] = ()


@dataclass(slots=True)
class Outcome:
    """How a worker finished (or handed back) a job it held."""

    job_id: str
    token: str
    kind: OutcomeKind
    result_json: str | None = None  # complete
    error_json: str | None = None  # retry / fail: an AttemptError as JSON
    delay_ms: int = 0  # retry / defer
    reason: str | None = None  # defer: why (recorded in the `deferred` event)


@dataclass(slots=True)
class Exchange:
    """What `Engine.exchange` returns."""

    jobs: list[Job] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # job ids whose lease was gone
    next_due_ms: int | None = None  # ms until a scheduled job is due or a rate window reopens
    recovered: int = 0  # expired leases this call recovered (stalled jobs)


@dataclass(slots=True)
class QueueCounts:
    """Depth of one queue per state."""

    queue: str
    scheduled: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    waiting: int = 0  # flow parents waiting for their children (state waiting-children)
    paused: bool = False
    oldest_pending_ms: int | None = None  # created_ms of the oldest pending job
    completed_1m: int = 0  # jobs that completed in the last 60 s (engine clock)
    failed_1m: int = 0  # jobs that reached `failed` in the last 60 s

    def set_state(self, state: str, n: int) -> None:
        """Set the depth of `state` (a JobState value; `waiting-children` is `waiting`)."""
        setattr(self, "waiting" if state == "waiting-children" else state, n)

    def to_dict(self) -> dict[str, Any]:
        """For JSON output (CLI `--json`, API, status document)."""
        return {
            "queue": self.queue,
            "scheduled": self.scheduled,
            "pending": self.pending,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "waiting-children": self.waiting,
            "paused": self.paused,
            "oldest_pending_ms": self.oldest_pending_ms,
            "completed_1m": self.completed_1m,
            "failed_1m": self.failed_1m,
        }


@dataclass(slots=True)
class JobPage:
    """One page of a listing; pass `cursor` back to get the next one."""

    jobs: list[Job]
    cursor: str | None  # None when there is nothing more


@dataclass(slots=True)
class Event:
    """One state change, as stored in a queue's event log."""

    id: str  # engine-specific, increasing within a queue; pass back as `since`
    kind: str
    job_id: str
    queue: str
    at: float  # wall-clock seconds
    task: str | None = None
    tenant: str | None = None
    attempt: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For JSON output (API, live updates over WebSocket)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "job_id": self.job_id,
            "queue": self.queue,
            "at": self.at,
            "task": self.task,
            "tenant": self.tenant,
            "attempt": self.attempt,
            "data": self.data,
        }


@dataclass(slots=True)
class LeaseInfo:
    """Who holds a lease and for how much longer (engine clock)."""

    holder: str
    ttl_ms: int


@dataclass(slots=True)
class StoredSchedule:
    """A schedule as the engine stores it (`spec_json` is a `ScheduleSpec` as JSON)."""

    name: str
    spec_json: str
    source: str  # "code" (registered by a scheduler from the app) | "runtime" (CLI/API)
    paused: bool
    since_ms: int  # occurrences after this are owed: created or last resumed
    last_run_ms: int | None  # the latest occurrence enqueued
    # Why the leader could not enqueue its latest occurrence, as JSON (`message`, `type`,
    # `at_ms`, `occurrence_ms`); None once a later run was recorded.
    last_error: str | None = None


@dataclass(slots=True)
class Throughput:
    """Finished jobs per minute over a recent window (`Engine.throughput_history`)."""

    queue: str
    end_ms: int  # engine clock: the last bucket ends here
    completed: list[int]  # one count per minute, oldest first
    failed: list[int]  # same buckets as `completed`
