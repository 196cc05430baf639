"""The engine protocol: the only layer that knows storage, in four cohesive parts.

Everything above (app facade, worker, CLI, API) talks to an `Engine`. Two storages
implement it — `sqlite://` (and `memory://`, the same engine on a private in-memory
database) and `redis://` — and one contract suite
(`tests/integration/contract/`) runs unchanged against each.

**The rules are not here.** What each outcome does to a job (target state, error
appended, attempt given back, place in line, event), what retry / cancel / promote /
clean require and what their refusals say, and the shared constants all live in
`conveyor.lifecycle`; the README's "Job contract" states them for users. An engine
*applies* those rules inside its atomic step (one SQLite transaction, one Lua script)
and decides none of them. Arguments are validated once, by the app facade; engines
do not re-check them.

What is left to each engine, and what the parts below promise:

* `JobFlow`: enqueue (all-or-nothing per call; a held dedupe key answers with the
  holder), `exchange` (apply outcomes, then promote due jobs, recover expired leases
  and claim, skipping paused queues; outcomes whose token no longer matches are
  reported in `Exchange.lost` and change nothing), heartbeats, progress, recovery.
* `ReadModel`: jobs, counts, listings, the event log and throughput, for the CLI, API
  and dashboard (kept off the worker's hot path).
* `Coordination`: the operator actions, named leases (scheduler leadership), the
  schedule store, the worker registry and fleet-wide limits.
* `Notifier`: `wait_for_jobs`, the wake-up that lets idle workers block, not poll.

Time is the engine's clock (Redis `TIME`; the engine's `Clock` for SQLite), in integer
milliseconds at the storage boundary.

Fairness and limits (`set_limits`) are enforced by the engine, so they hold for the
whole fleet: `concurrency` caps the queue's running jobs, `tenant_concurrency` one
tenant's (jobs without a tenant are not subject to it), `rate` / `tenant_rate` the
jobs started in a sliding window. A job held back by a limit stays `pending`, spends
no attempt and keeps its place. Tenants take turns (least recently served bucket
first, one job per turn; jobs without a tenant are one more bucket), priority then
FIFO orders the jobs within a bucket. `Exchange.next_due_ms` covers the moment a rate
window reopens, and a job of a limited queue that stops running wakes idle workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol, runtime_checkable

from ..job import EnqueueResult, Job, JobState, NewJob
from ..limits import QueueLimits
from .values import (
    EVENT_KINDS,
    Event,
    Exchange,
    FlowLinks,
    FlowNode,
    JobPage,
    LeaseInfo,
    Outcome,
    OutcomeKind,
    QueueCounts,
    StoredSchedule,
    Throughput,
)

__all__ = [
    "EVENT_KINDS",
    "Coordination",
    "Engine",
    "Event",
    "Exchange",
    "FlowLinks",
    "FlowNode",
    "Flows",
    "HandsOff",
    "InTransaction",
    "JobFlow",
    "JobPage",
    "LeaseInfo",
    "Notifier",
    "Outcome",
    "OutcomeKind",
    "QueueCounts",
    "ReadModel",
    "StoredSchedule",
    "Throughput",
]


@runtime_checkable
class JobFlow(Protocol):
    """The job flow: producers store jobs, workers claim them and report outcomes.

    Every method may raise `EngineUnavailable`.
    """

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs, in one round trip per queue. Results are in input order."""

    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        """Apply `outcomes`, then claim up to `limit` jobs (see module docstring)."""

    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend the leases `(job_id, token)` to now + lease_ms; return ids that were lost."""

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress for a running job; False when the lease is gone."""

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""


@runtime_checkable
class Flows(Protocol):
    """Flows: a parent job that runs once its children have finished (`lifecycle` rule 6).

    The engine stores a flow whole in one atomic step, and applies a child's finish to
    its parent inside the child's own atomic step (complete, fail, lease expiry, cancel).
    """

    async def enqueue_flow(self, nodes: Sequence[FlowNode]) -> EnqueueResult:
        """Store a flow: `nodes[0]` is the root, every parent comes before its children,
        all in one queue. A root whose dedupe key a live job holds answers with that job
        (`created=False`) and nothing is written. Returns the root's result."""

    async def flow_links(self, job_id: str) -> FlowLinks:
        """The job's parent and children. Raises `JobNotFound`."""


@runtime_checkable
class ReadModel(Protocol):
    """What the CLI, API and dashboard read: jobs, counts, listings, events, throughput."""

    async def get_job(self, job_id: str) -> Job:
        """Raises `JobNotFound` if there is no such job, `MalformedJob` if undecodable."""

    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""

    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state, paused flag, oldest pending job, completions/failures in the
        last minute (O(log n): counted from the finished-time indexes, no scans)."""

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in one state: pending in claim order, others newest first."""

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen event id; absent = only new ones).

        Blocks up to `block_ms` when there is nothing yet.
        """

    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The id of the newest event of each queue ("0" when it has none), so a reader
        can start "from now" and pass the position back as `since`."""

    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Jobs of `queue` that completed and that failed, per minute, over the last
        `minutes` minutes of the engine's clock (the dashboard's sparklines).

        Minute `i` of `minutes` counts jobs finished in `(end - (minutes - i) * 60 s,
        end - (minutes - 1 - i) * 60 s]`, so the last bucket is what `counts` reports as
        `completed_1m` / `failed_1m`. Counted from the finished-time indexes (Redis:
        ZCOUNT, O(log n) per bucket; SQLite: one index range over the window), never by
        scanning the queue's finished jobs. An unknown queue gives zeros.
        """


@runtime_checkable
class Coordination(Protocol):
    """Operator actions, leadership leases, schedules, the worker registry and limits."""

    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""

    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""

    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled → pending with a fresh attempt budget (`lifecycle.RETRYABLE`).

        Raises:
            JobNotFound: no such job (`lifecycle.not_found`).
            InvalidState: not retryable (`lifecycle.not_retryable`), or its dedupe key is
                held by another live job (`lifecycle.dedupe_held`); nothing changes.
        """

    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running → cancelled (a running job's lease is revoked)."""

    async def promote_job(self, job_id: str) -> Job:
        """scheduled → pending now. Raises `InvalidState` for other states."""

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state` (already checked by the facade with
        `lifecycle.check_retry_all`); jobs whose dedupe key is held by another live job
        are skipped and not counted. Returns how many were retried."""

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` jobs in the finished `state` (checked by the facade with
        `lifecycle.check_clean`) that finished more than `older_than_ms` ago, oldest
        finish first; returns how many."""

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and its dedupe keys; returns how many."""

    # A lease is a named lock with a holder and a deadline on the engine's clock. The
    # scheduler holds the lease "scheduler" while it leads; `advance_schedule` is fenced
    # by it.
    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` for `ttl_ms` if nobody holds it (or its holder's expired).

        Returns:
            True if `holder` now holds it (also when it already did: the lease is
            extended), False if another holder's lease is still live.
        """

    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` to now + `ttl_ms` only if `holder` still holds it.

        Returns:
            False when the lease expired or another holder took it (the caller must stop
            acting as the holder).
        """

    async def release_lease(self, name: str, holder: str) -> bool:
        """Drop lease `name` if `holder` holds it, so another can take it at once.

        Returns:
            Whether `holder` held it.
        """

    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining time, or None when free."""

    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule's definition. An update keeps its paused flag,
        baseline and last run; a new schedule's baseline (`since_ms`) is now."""

    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, sorted by name."""

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""

    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume a schedule; returns whether it exists. Resuming a paused
        schedule moves its baseline to now: occurrences that fell while it was paused
        are never owed."""

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Record that the occurrence at `run_ms` was enqueued (`last_run_ms`), fenced.

        Atomically checks that `holder` holds the live lease `lease` and that `run_ms` is
        later than the stored last run; otherwise changes nothing. Recording a run clears
        the schedule's last error.

        Returns:
            Whether it was recorded (False: leadership lost, schedule gone, or not later).
        """

    async def record_schedule_error(
        self, name: str, error_json: str, *, lease: str, holder: str
    ) -> bool:
        """Store why an occurrence of schedule `name` could not be enqueued, fenced.

        Fenced like `advance_schedule` (a deposed leader writes nothing); the error
        replaces the previous one and stays until `advance_schedule` records a run.

        Args:
            name: the schedule.
            error_json: the error as JSON: `message`, `type`, `at_ms`, `occurrence_ms`.
            lease: the leadership lease the caller must hold.
            holder: the caller's holder id.

        Returns:
            Whether it was stored (False: leadership lost or schedule gone).
        """

    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive (its info: queues, in-flight, concurrency)."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""

    async def workers(self) -> list[dict[str, Any]]:
        """Workers whose record has not expired, each with its info, `id`, `expires_ms`
        and `last_seen` (seconds, the engine's clock at its last registration: a
        `last_seen` in the worker's own info never wins)."""

    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits for the whole fleet (None or empty: no limits) and wake
        idle workers, since a raised or removed limit may make pending jobs claimable."""

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty `QueueLimits()` when it has none)."""

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (tenants with none are left out); what the
        engine counts `tenant_concurrency` against."""


@runtime_checkable
class Notifier(Protocol):
    """The wake-up that lets idle workers block instead of polling."""

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of `queues` may have claimable work, or after `timeout` s.

        Blocks (no busy polling on Redis). Spurious wake-ups are allowed.
        """


@runtime_checkable
class HandsOff(Protocol):
    """An engine that can hand a new job straight to an idle worker (Redis: the one-hop
    pickup, see `engines/redis/pickup.py`). The job arrives claimed for that worker,
    under a lease, exactly as `exchange` would have claimed it; a worker that never calls
    `accept_handoffs` is never handed anything."""

    def accept_handoffs(self, worker_id: str, on_handed: Callable[[], None] | None = None) -> None:
        """`worker_id` takes handed jobs from now on (when its claims find none);
        `on_handed` is called (on the event loop) as soon as one arrives."""

    def take_handed(self, worker_id: str) -> list[Job]:
        """Jobs handed to `worker_id` since the last call (`wait_for_jobs` returns when
        one arrives; `exchange` returns those not taken yet with its claimed jobs)."""

    async def stop_handoffs(self, worker_id: str) -> list[Job]:
        """Stop handing jobs to `worker_id`; returns the handed jobs it has not taken
        (still claimed for it: the caller gives them back)."""


@runtime_checkable
class InTransaction(Protocol):
    """An engine that can store jobs inside a caller's own database transaction
    (``postgresql://``): `connection` is the caller's driver connection."""

    async def enqueue_in(self, connection: Any, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` through the caller's async connection, in its transaction."""

    def enqueue_in_sync(self, connection: Any, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` through the caller's sync connection, in its transaction."""

    async def get_job_in(self, connection: Any, job_id: str) -> Job:
        """Read a job as the caller's transaction sees it. Raises `JobNotFound`."""

    def get_job_in_sync(self, connection: Any, job_id: str) -> Job:
        """`get_job_in` on a sync connection. Raises `JobNotFound`."""


@runtime_checkable
class Engine(JobFlow, Flows, ReadModel, Coordination, Notifier, Protocol):
    """Storage for jobs: the four parts above plus connection management."""

    url: str
    durable: bool  # survives a crash of the process that holds it
    # Queues with no event log (lifecycle rule 7: `app.limits(q, events=False)`); the app
    # hands its live set to the engine it builds, so declarations made later still count.
    unstreamed: AbstractSet[str]

    async def connect(self) -> None:
        """Open connections and verify the engine answers.

        Raises:
            EngineUnavailable: the engine cannot be reached; the message names the URL.
        """

    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    async def ping(self) -> float:
        """Round-trip time in seconds. Raises `EngineUnavailable`."""
