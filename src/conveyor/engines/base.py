"""The engine protocol: the only layer that knows storage.

Everything above (app facade, worker, CLI, API) talks to an `Engine`. Three engines
implement it — `redis://`, `sqlite://`, `memory://` — and one contract suite
(`tests/integration/contract/`) runs unchanged against each.

Semantics every engine must honour (the contract suite checks them):

* Time: the engine's clock decides due times and lease deadlines (Redis `TIME`; the
  process clock for SQLite and memory). Storage uses integer milliseconds.
* `enqueue`: all-or-nothing per call. A job whose due time is in the future is
  `scheduled`, otherwise `pending`. A dedupe key held by a job that is still
  scheduled/pending/running returns that job (`created=False`) and writes nothing.
  Pending jobs are claimed highest `priority` first, FIFO within a priority.
* `exchange`: first applies `outcomes`, then (if `limit > 0`) claims up to `limit`
  jobs from `queues` (in the order given), skipping paused queues. Before claiming it
  promotes due scheduled jobs and recovers expired leases of those queues. Claiming
  increments `attempt`, sets state `running`, a fresh token, `started_ms`, and a lease
  deadline `now + lease_ms`. Outcomes whose token no longer matches (lease lost,
  job cancelled) change nothing and are reported in `Exchange.lost`.
* Outcome kinds: `complete` (→ completed, result stored), `retry` (→ scheduled at
  now + delay_ms, or pending when delay_ms == 0; error appended), `fail` (→ failed,
  error appended), `release` (→ pending at the front of its priority, attempt given
  back: used on graceful shutdown).
* Expired lease recovery: a running job whose deadline passed goes back to `pending`
  (event `stalled`) — unless its attempts are spent (`attempt >= max_attempts`),
  then it becomes `failed` with an error saying the worker was lost. This is what
  ends crash loops.
* Dedupe keys are released when a job leaves the active states.
* Every state change appends an `Event` to the queue's bounded event log.
* `defer` (a handler was rate limited, or a circuit breaker is open) gives the attempt
  back like `release` and puts the job in `scheduled` until now + delay_ms (pending at
  the back of its priority when delay_ms == 0). No error is appended: it was not a
  failed attempt. Event `deferred` carries the reason and the delay.

Fairness and limits (`set_limits`; enforced by the engine, so they hold for the whole
fleet however many workers claim):

* `concurrency`: a claim never makes more than this many jobs of the queue `running`.
* `tenant_concurrency`: nor more than this many of one tenant. Jobs without a tenant
  are not subject to it (they belong to no tenant; queue-wide limits still apply).
* `rate` / `tenant_rate`: at most `n` jobs *started* (claimed) in any window of
  `window_ms` (a sliding window on the engine's clock), per queue / per tenant.
* A job held back by a limit stays `pending`, spends no attempt and keeps its place.
* Tenants take turns: each claim serves the buckets that have pending jobs (one per
  tenant, plus one for the jobs without a tenant) least recently served first, one job
  per turn, so a tenant with 100,000 pending jobs cannot delay a tenant with 10.
  Priority, then FIFO, still orders the jobs within a bucket; a tenant that is at its
  limit passes its turn. `list_jobs(pending)` keeps showing the queue's priority/FIFO
  order (the order within each bucket); claim order across tenants is the rotation.
* When limits held claims back, `Exchange.next_due_ms` also covers the moment a rate
  window reopens, so idle workers sleep exactly that long. A running job of a queue
  with a concurrency limit that leaves `running` wakes idle workers (Redis: PUBLISH on
  the wake channel; SQLite: the commit changes `data_version`; memory: the wake event).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import ConfigError
from ..job import EnqueueResult, Job, JobState, NewJob

OutcomeKind = Literal["complete", "retry", "fail", "release", "defer"]

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
)


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


_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_LIMIT = 100_000  # the rate log keeps one entry per start inside the window
MAX_WINDOW_MS = 86_400_000


def parse_rate(text: str, *, option: str = "rate") -> tuple[int, int]:
    """Read a rate such as ``"100/1s"``, ``"100/s"``, ``"5/250ms"``, ``"1000/1m"``.

    Returns:
        (jobs, window in milliseconds).

    Raises:
        ConfigError: not of the form N/<window>; the message shows the forms.
    """
    match = _RATE.match(text) if isinstance(text, str) else None
    fix = (
        f"{option}={text!r} is invalid: use JOBS/WINDOW such as 100/1s, 100/s, 5/250ms, "
        f"1000/1m or 10/1h (JOBS from 1 to {MAX_LIMIT:,}, WINDOW from 1ms to 24h)"
    )
    if match is None:
        raise ConfigError(fix)
    jobs = int(match.group(1))
    window_ms = round(float(match.group(2) or 1) * _UNIT_MS[match.group(3)])
    if not 1 <= jobs <= MAX_LIMIT or not 1 <= window_ms <= MAX_WINDOW_MS:
        raise ConfigError(fix)
    return jobs, window_ms


def format_rate(jobs: int | None, window_ms: int) -> str | None:
    """The inverse of `parse_rate`: (100, 1000) -> "100/1s"; None when `jobs` is None."""
    if jobs is None:
        return None
    for unit in ("h", "m", "s"):
        if window_ms % _UNIT_MS[unit] == 0:
            return f"{jobs}/{window_ms // _UNIT_MS[unit]}{unit}"
    return f"{jobs}/{window_ms}ms"


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Fleet-wide limits of one queue, stored and enforced by the engine.

    Every field is optional (None = no limit); see the module docstring for what each
    one means. Build one from user input with `QueueLimits.build`, which parses rates.

    Raises:
        ConfigError: a value is not a positive integer in range (the message names it).
    """

    concurrency: int | None = None  # running jobs of the queue, across all workers
    tenant_concurrency: int | None = None  # running jobs of one tenant
    rate: int | None = None  # jobs started per `rate_window_ms`, queue-wide
    rate_window_ms: int = 1000
    tenant_rate: int | None = None  # jobs started per `tenant_rate_window_ms`, per tenant
    tenant_rate_window_ms: int = 1000

    def __post_init__(self) -> None:
        for name in ("concurrency", "tenant_concurrency", "rate", "tenant_rate"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT
            ):
                raise ConfigError(
                    f"{name}={value!r} is invalid: use an integer from 1 to {MAX_LIMIT:,}, "
                    "or leave it unset for no limit (pause the queue to stop it)"
                )
        for name in ("rate_window_ms", "tenant_rate_window_ms"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_WINDOW_MS
            ):
                raise ConfigError(f"{name}={value!r} is invalid: use 1 to {MAX_WINDOW_MS} ms")

    @classmethod
    def build(
        cls,
        *,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Limits from user input; rates are strings like ``"100/1s"``.

        Raises:
            ConfigError: an invalid value; the message names the option and the fix.
        """
        rate_n, rate_ms = parse_rate(rate) if rate is not None else (None, 1000)
        trate_n, trate_ms = (
            parse_rate(tenant_rate, option="tenant_rate")
            if tenant_rate is not None
            else (None, 1000)
        )
        return cls(concurrency, tenant_concurrency, rate_n, rate_ms, trate_n, trate_ms)

    @property
    def empty(self) -> bool:
        """True when nothing is limited."""
        return (
            self.concurrency is None
            and self.tenant_concurrency is None
            and self.rate is None
            and self.tenant_rate is None
        )

    def to_dict(self) -> dict[str, Any]:
        """For people and JSON output: rates as ``"100/1s"`` strings."""
        return {
            "concurrency": self.concurrency,
            "tenant_concurrency": self.tenant_concurrency,
            "rate": format_rate(self.rate, self.rate_window_ms),
            "tenant_rate": format_rate(self.tenant_rate, self.tenant_rate_window_ms),
        }

    def fields(self) -> dict[str, int | None]:
        """For storage: every field as an integer (or None)."""
        return {
            "concurrency": self.concurrency,
            "tenant_concurrency": self.tenant_concurrency,
            "rate": self.rate,
            "rate_window_ms": self.rate_window_ms,
            "tenant_rate": self.tenant_rate,
            "tenant_rate_window_ms": self.tenant_rate_window_ms,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> QueueLimits:
        """Inverse of `fields` (missing or empty values mean no limit)."""

        def opt(name: str) -> int | None:
            value = fields.get(name)
            return None if value in (None, "") else int(value)

        return cls(
            opt("concurrency"),
            opt("tenant_concurrency"),
            opt("rate"),
            opt("rate_window_ms") or 1000,
            opt("tenant_rate"),
            opt("tenant_rate_window_ms") or 1000,
        )


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
    paused: bool = False
    oldest_pending_ms: int | None = None  # created_ms of the oldest pending job
    completed_1m: int = 0  # jobs that completed in the last 60 s (engine clock)
    failed_1m: int = 0  # jobs that reached `failed` in the last 60 s

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "scheduled": self.scheduled,
            "pending": self.pending,
            "running": self.running,
            "completed": self.completed,
            "failed": self.failed,
            "cancelled": self.cancelled,
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


@runtime_checkable
class Engine(Protocol):
    """Storage for jobs. Every method may raise `EngineUnavailable`."""

    url: str
    durable: bool  # survives a crash of the process that holds it

    async def connect(self) -> None:
        """Open connections and verify the engine answers.

        Raises:
            EngineUnavailable: the engine cannot be reached; the message names the URL.
        """

    async def close(self) -> None:
        """Release connections. Safe to call twice."""

    async def ping(self) -> float:
        """Round-trip time in seconds. Raises `EngineUnavailable`."""

    # --- producers --------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs, in one round trip per queue. Results are in input order."""

    # --- workers (hot path) -----------------------------------------------------
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

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of `queues` may have claimable work, or after `timeout` s.

        Blocks (no busy polling on Redis). Spurious wake-ups are allowed.
        """

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""

    # --- read model ---------------------------------------------------------------
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

    # --- operations -----------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Workers stop claiming from `queue`; producers keep enqueueing."""

    async def resume(self, queue: str) -> None:
        """Undo `pause` and wake idle workers."""

    async def retry_job(self, job_id: str) -> Job:
        """failed/cancelled → pending with a fresh attempt budget. Raises `InvalidState`."""

    async def cancel_job(self, job_id: str) -> Job:
        """scheduled/pending/running → cancelled (a running job's lease is revoked)."""

    async def promote_job(self, job_id: str) -> Job:
        """scheduled → pending now. Raises `InvalidState` for other states."""

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        """Retry every job of `queue` in `state` (failed or cancelled); returns how many."""

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        """Delete up to `limit` finished jobs in `state` finished more than `older_than_ms` ago."""

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue` (all states) and its dedupe keys; returns how many."""

    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive (its info: queues, in-flight, concurrency)."""

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""

    async def workers(self) -> list[dict[str, Any]]:
        """Workers whose record has not expired, each with `id`, `last_seen` and its info."""

    # --- fairness and limits (see the module docstring) ----------------------------------
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits for the whole fleet (None or empty: no limits) and wake
        idle workers, since a raised or removed limit may make pending jobs claimable."""

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty `QueueLimits()` when it has none)."""

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (tenants with none are left out); what the
        engine counts `tenant_concurrency` against."""

    # --- scheduler: leadership leases and the schedule store ----------------------------
    # A lease is a named lock with a holder and a deadline on the engine's clock (Redis
    # `TIME`/PX; the process clock for SQLite and memory). The scheduler holds the lease
    # "scheduler" while it leads; `advance_schedule` is fenced by it.
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
        later than the stored last run; otherwise changes nothing.

        Returns:
            Whether it was recorded (False: leadership lost, schedule gone, or not later).
        """

    # --- dashboard read model -----------------------------------------------------------
    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Jobs of `queue` that completed and that failed, per minute, over the last
        `minutes` minutes of the engine's clock (the dashboard's sparklines).

        Minute `i` of `minutes` counts jobs finished in `(end - (minutes - i) * 60 s,
        end - (minutes - 1 - i) * 60 s]`, so the last bucket is what `counts` reports as
        `completed_1m` / `failed_1m`. Counted from the finished-time indexes (Redis:
        ZCOUNT, O(log n) per bucket; SQLite: one index range over the window), never by
        scanning the queue's finished jobs. An unknown queue gives zeros.
        """


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


@dataclass(slots=True)
class Throughput:
    """Finished jobs per minute over a recent window (`Engine.throughput_history`)."""

    queue: str
    end_ms: int  # engine clock: the last bucket ends here
    completed: list[int]  # one count per minute, oldest first
    failed: list[int]  # same buckets as `completed`
