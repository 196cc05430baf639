"""`memory://` — an engine in this process's memory, for tests.

It follows the same contract as the durable engines (the contract suite runs it too)
and takes a `Clock`, so unit tests can drive due times and lease expiry with a
`FakeClock`. It is not durable: `/health/ready` reports 503 on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from ..clock import Clock
from ..errors import InvalidState, JobNotFound
from ..job import ACTIVE_STATES, EnqueueResult, Job, JobState, NewJob, decode_job, decode_lenient
from ..limits import QueueLimits
from .base import (
    Event,
    Exchange,
    JobPage,
    LeaseInfo,
    Outcome,
    QueueCounts,
    StoredSchedule,
    Throughput,
)

_PRIORITY_SPAN = 1 << 44


def lease_expired_error(attempt: int, now_ms: int) -> str:
    """The error recorded when a job's worker vanished on its last attempt."""
    return orjson.dumps(
        {
            "attempt": attempt,
            "type": "LeaseExpired",
            "message": f"worker lost while running attempt {attempt} (killed or hung); "
            "lease expired",
            "at": now_ms / 1000.0,
        }
    ).decode()


class _Queue:
    def __init__(self, name: str, events_maxlen: int) -> None:
        self.name = name
        self.paused = False
        # One (score, id) heap per bucket: a tenant, or None for jobs without one (stale
        # entries are skipped when popped). Tenants take turns: see `MemoryEngine._claim`.
        self.buckets: dict[str | None, list[tuple[int, str]]] = {}
        self.turns: dict[str | None, int] = {}  # bucket -> when it was last served
        self.limits = QueueLimits()
        self.starts: deque[int] = deque()  # start times within the rate window
        self.tenant_starts: dict[str, deque[int]] = {}
        self.scheduled: list[tuple[int, str]] = []  # (due_ms, id) heap; stale entries skipped
        self.dedupe: dict[str, str] = {}
        self.events: deque[Event] = deque(maxlen=events_maxlen)
        self.ids: dict[str, None] = {}  # insertion-ordered job ids of this queue


class MemoryEngine:
    """Jobs in a dict; see `conveyor.engines.base` for the contract."""

    durable = False

    def __init__(
        self, url: str = "memory://", *, clock: Clock | None = None, events_maxlen: int = 10_000
    ) -> None:
        self.url = url
        self.clock = clock or Clock()
        self._events_maxlen = events_maxlen
        self._jobs: dict[str, dict[str, Any]] = {}
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count(1)
        self._turns = itertools.count(1)  # bucket turns: least recently served goes first
        self._front = itertools.count(-1, -1)  # released jobs go before everything else
        self._event_ids = itertools.count(1)
        self._wake = asyncio.Event()
        self._event_added = asyncio.Event()
        self._workers: dict[str, tuple[int, dict[str, Any]]] = {}
        self._leases: dict[str, tuple[str, int]] = {}  # name -> (holder, expires_ms)
        self._schedules: dict[str, StoredSchedule] = {}

    # --- lifecycle -----------------------------------------------------------------
    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> float:
        return 0.0

    # --- helpers ---------------------------------------------------------------------
    def _queue(self, name: str) -> _Queue:
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = _Queue(name, self._events_maxlen)
        return q

    def _emit(self, job: dict[str, Any], kind: str, **data: Any) -> None:
        q = self._queue(job["queue"])
        q.events.append(
            Event(
                id=str(next(self._event_ids)),
                kind=kind,
                job_id=job["id"],
                queue=job["queue"],
                at=self.clock.now(),
                task=job["task"],
                tenant=job["tenant"],
                attempt=job["attempt"],
                data=data,
            )
        )
        self._event_added.set()

    def _push_pending(self, job: dict[str, Any], *, front: bool = False) -> None:
        seq = next(self._front) if front else next(self._seq)
        job["state"] = JobState.PENDING.value
        job["seq"] = seq
        job["scheduled_ms"] = None
        score = (100 - int(job["priority"])) * _PRIORITY_SPAN + seq
        heapq.heappush(
            self._queue(job["queue"]).buckets.setdefault(job["tenant"], []), (score, job["id"])
        )
        self._wake.set()

    def _schedule(self, job: dict[str, Any], due_ms: int) -> None:
        job["state"] = JobState.SCHEDULED.value
        job["scheduled_ms"] = due_ms
        heapq.heappush(self._queue(job["queue"]).scheduled, (due_ms, job["id"]))

    def _finish(self, job: dict[str, Any], state: JobState, now_ms: int) -> None:
        job["state"] = state.value
        job["finished_ms"] = now_ms
        job["token"] = None
        job["lease_until_ms"] = None
        key = job["dedupe_key"]
        q = self._queue(job["queue"])
        if key is not None and q.dedupe.get(key) == job["id"]:
            del q.dedupe[key]

    def _left_running(self, job: dict[str, Any]) -> None:
        """A running job stopped running: a slot under a concurrency limit is free."""
        limits = self._queue(job["queue"]).limits
        if limits.concurrency is not None or limits.tenant_concurrency is not None:
            self._wake.set()

    def _get(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job with id {job_id!r}: check the id, or it was cleaned")
        return job

    @staticmethod
    def _fields(job: dict[str, Any]) -> dict[str, Any]:
        fields = dict(job)
        fields["errors"] = job["errors"]
        return fields

    def _promote_due(self, q: _Queue, now_ms: int) -> None:
        while q.scheduled and q.scheduled[0][0] <= now_ms:
            due, job_id = heapq.heappop(q.scheduled)
            job = self._jobs.get(job_id)
            if job and job["state"] == JobState.SCHEDULED.value and job["scheduled_ms"] == due:
                self._push_pending(job)

    def _recover(self, q: _Queue, now_ms: int) -> int:
        recovered = 0
        for job_id in list(q.ids):
            job = self._jobs[job_id]
            if job["state"] != JobState.RUNNING.value or job["lease_until_ms"] > now_ms:
                continue
            recovered += 1
            job["token"] = None
            job["lease_until_ms"] = None
            self._left_running(job)
            if job["attempt"] >= job["max_attempts"]:
                job["errors"].append(lease_expired_error(job["attempt"], now_ms))
                self._finish(job, JobState.FAILED, now_ms)
                self._emit(job, "failed", error="lease expired: worker lost")
            else:
                self._push_pending(job)
                self._emit(job, "stalled")
        return recovered

    def _next_due_ms(self, queues: Sequence[str], now_ms: int) -> int | None:
        dues = [
            self._queues[name].scheduled[0][0]
            for name in queues
            if name in self._queues and self._queues[name].scheduled
        ]
        return max(0, min(dues) - now_ms) if dues else None

    # --- producers -------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        now_ms = self.clock.now_ms()
        results: list[EnqueueResult] = []
        for new in jobs:
            q = self._queue(new.queue)
            if new.id in self._jobs:  # a retried enqueue (outbox relay): no second job
                existing = self._jobs[new.id]
                results.append(EnqueueResult(existing["id"], False, JobState(existing["state"])))
                continue
            if new.dedupe_key is not None and new.dedupe_key in q.dedupe:
                existing = self._jobs[q.dedupe[new.dedupe_key]]
                results.append(EnqueueResult(existing["id"], False, JobState(existing["state"])))
                continue
            job: dict[str, Any] = {
                "id": new.id,
                "queue": new.queue,
                "task": new.task,
                "payload": new.payload_json,
                "state": None,
                "attempt": 0,
                "max_attempts": new.max_attempts,
                "priority": new.priority,
                "tenant": new.tenant,
                "dedupe_key": new.dedupe_key,
                "timeout_ms": None if new.timeout is None else int(new.timeout * 1000),
                "backoff": new.backoff_json,
                "created_ms": now_ms,
                "scheduled_ms": None,
                "started_ms": None,
                "finished_ms": None,
                "progress": None,
                "result": None,
                "errors": [],
                "token": None,
                "worker": None,
                "lease_until_ms": None,
                "seq": 0,
            }
            self._jobs[new.id] = job
            q.ids[new.id] = None
            if new.dedupe_key is not None:
                q.dedupe[new.dedupe_key] = new.id
            due = new.run_at_ms if new.run_at_ms is not None else now_ms + new.delay_ms
            if due > now_ms:
                self._schedule(job, due)
            else:
                self._push_pending(job)
            self._emit(job, "enqueued")
            results.append(EnqueueResult(new.id, True, JobState(job["state"])))
        return results

    # --- workers ---------------------------------------------------------------------
    def _apply(self, outcome: Outcome, now_ms: int) -> bool:
        job = self._jobs.get(outcome.job_id)
        if job is None or job["state"] != JobState.RUNNING.value or job["token"] != outcome.token:
            return False
        self._left_running(job)
        if outcome.kind == "complete":
            job["result"] = outcome.result_json
            self._finish(job, JobState.COMPLETED, now_ms)
            self._emit(job, "completed")
        elif outcome.kind == "fail":
            job["errors"].append(outcome.error_json)
            self._finish(job, JobState.FAILED, now_ms)
            self._emit(job, "failed", error=_message(outcome.error_json))
        elif outcome.kind == "retry":
            job["errors"].append(outcome.error_json)
            job["token"] = None
            job["lease_until_ms"] = None
            if outcome.delay_ms > 0:
                self._schedule(job, now_ms + outcome.delay_ms)
            else:
                self._push_pending(job)
            self._emit(
                job, "retried", error=_message(outcome.error_json), delay_ms=outcome.delay_ms
            )
        elif outcome.kind == "defer":  # rate limited / breaker open: not a failed attempt
            job["attempt"] = max(0, job["attempt"] - 1)
            job["token"] = None
            job["lease_until_ms"] = None
            job["started_ms"] = None
            if outcome.delay_ms > 0:
                self._schedule(job, now_ms + outcome.delay_ms)
            else:
                self._push_pending(job)
            self._emit(job, "deferred", reason=outcome.reason or "", delay_ms=outcome.delay_ms)
        elif outcome.kind == "release":  # hand back without spending the attempt
            job["attempt"] = max(0, job["attempt"] - 1)
            job["token"] = None
            job["lease_until_ms"] = None
            job["started_ms"] = None
            self._push_pending(job, front=True)
            self._emit(job, "released")
        else:
            raise ValueError(f"unknown outcome kind {outcome.kind!r} for job {outcome.job_id}")
        return True

    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        now_ms = self.clock.now_ms()
        lost = [o.job_id for o in outcomes if not self._apply(o, now_ms)]
        claimed: list[Job] = []
        hint: int | None = None  # ms until a rate window reopens, when one held claims back
        if limit > 0:
            for name in queues:
                q = self._queue(name)
                self._promote_due(q, now_ms)
                self._recover(q, now_ms)
                if q.paused or len(claimed) >= limit:
                    continue
                wait = self._claim(q, limit - len(claimed), now_ms, worker_id, lease_ms, claimed)
                if wait is not None and (hint is None or wait < hint):
                    hint = wait
        next_due = self._next_due_ms(queues, now_ms)
        if hint is not None and (next_due is None or hint < next_due):
            next_due = hint
        return Exchange(jobs=claimed, lost=lost, next_due_ms=next_due)

    def _head(self, q: _Queue, bucket: str | None) -> tuple[int, str] | None:
        """The best live entry of a bucket (stale heap entries dropped), or None."""
        heap = q.buckets.get(bucket)
        while heap:
            score, job_id = heap[0]
            job = self._jobs.get(job_id)
            if (
                job is not None
                and job["state"] == JobState.PENDING.value
                and (100 - int(job["priority"])) * _PRIORITY_SPAN + job["seq"] == score
            ):
                return score, job_id
            heapq.heappop(heap)
        q.buckets.pop(bucket, None)
        return None

    @staticmethod
    def _window(log: deque[int], now_ms: int, window_ms: int) -> None:
        while log and log[0] <= now_ms - window_ms:
            log.popleft()

    def _claim(
        self,
        q: _Queue,
        room: int,
        now_ms: int,
        worker_id: str,
        lease_ms: int,
        claimed: list[Job],
    ) -> int | None:
        """Claim up to `room` jobs of `q` under its limits, tenants taking turns.

        Returns:
            ms until a rate window reopens when a rate limit held jobs back, else None.
        """
        lim = q.limits
        hint: int | None = None
        running = [self._jobs[i] for i in q.ids if self._jobs[i]["state"] == "running"]
        if lim.concurrency is not None:
            room = min(room, lim.concurrency - len(running))
        if lim.rate is not None:
            self._window(q.starts, now_ms, lim.rate_window_ms)
            if len(q.starts) >= lim.rate:
                hint = q.starts[0] + lim.rate_window_ms - now_ms
            room = min(room, lim.rate - len(q.starts))
        by_tenant: dict[str, int] = {}
        for job in running:
            if job["tenant"] is not None:
                by_tenant[job["tenant"]] = by_tenant.get(job["tenant"], 0) + 1
        taken = 0
        while taken < room:
            ready = sorted(
                (b for b in list(q.buckets) if self._head(q, b) is not None),
                key=lambda b: q.turns.get(b, 0),
            )
            served = False
            for bucket in ready:
                if taken >= room:
                    break
                allowed = room - taken if len(ready) == 1 else 1
                if bucket is not None:  # tenant limits; jobs without a tenant have none
                    if lim.tenant_concurrency is not None:
                        allowed = min(allowed, lim.tenant_concurrency - by_tenant.get(bucket, 0))
                    if lim.tenant_rate is not None:
                        log = q.tenant_starts.setdefault(bucket, deque())
                        self._window(log, now_ms, lim.tenant_rate_window_ms)
                        if len(log) >= lim.tenant_rate:
                            wait = log[0] + lim.tenant_rate_window_ms - now_ms
                            hint = wait if hint is None else min(hint, wait)
                        allowed = min(allowed, lim.tenant_rate - len(log))
                q.turns[bucket] = next(self._turns)  # served or passed: back of the line
                for _ in range(max(0, allowed)):
                    head = self._head(q, bucket)
                    if head is None:
                        break
                    heapq.heappop(q.buckets[bucket])
                    job = self._jobs[head[1]]
                    job["state"] = JobState.RUNNING.value
                    job["attempt"] += 1
                    job["token"] = uuid.uuid4().hex
                    job["started_ms"] = now_ms
                    job["worker"] = worker_id
                    job["lease_until_ms"] = now_ms + lease_ms
                    self._emit(job, "started")
                    claimed.append(decode_lenient(self._fields(job)))
                    taken += 1
                    served = True
                    if lim.rate is not None:
                        q.starts.append(now_ms)
                    if bucket is not None:
                        by_tenant[bucket] = by_tenant.get(bucket, 0) + 1
                        if lim.tenant_rate is not None:
                            q.tenant_starts[bucket].append(now_ms)
            if not served:
                break
        return hint

    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        now_ms = self.clock.now_ms()
        lost = []
        for job_id, token in leases:
            job = self._jobs.get(job_id)
            if job is None or job["state"] != JobState.RUNNING.value or job["token"] != token:
                lost.append(job_id)
            else:
                job["lease_until_ms"] = now_ms + lease_ms
        return lost

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job["state"] != JobState.RUNNING.value or job["token"] != token:
            return False
        job["progress"] = progress_json
        self._emit(job, "progress", progress=orjson.loads(progress_json))
        return True

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def recover_expired(self, queues: Sequence[str]) -> int:
        now_ms = self.clock.now_ms()
        return sum(self._recover(self._queue(name), now_ms) for name in queues)

    # --- read model --------------------------------------------------------------------
    async def get_job(self, job_id: str) -> Job:
        return decode_job(self._fields(self._get(job_id)))

    async def queue_names(self) -> list[str]:
        return sorted(self._queues)

    async def counts(self, queue: str) -> QueueCounts:
        q = self._queues.get(queue)
        counts = QueueCounts(queue=queue, paused=bool(q and q.paused))
        if q is None:
            return counts
        oldest: int | None = None
        minute_ago = self.clock.now_ms() - 60_000
        for job_id in q.ids:
            job = self._jobs[job_id]
            state = job["state"]
            setattr(counts, state, getattr(counts, state) + 1)
            if state == JobState.PENDING.value and (oldest is None or job["created_ms"] < oldest):
                oldest = job["created_ms"]
            recent = (job["finished_ms"] or 0) > minute_ago
            counts.completed_1m += recent and state == JobState.COMPLETED.value
            counts.failed_1m += recent and state == JobState.FAILED.value
        counts.oldest_pending_ms = oldest
        return counts

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        q = self._queues.get(queue)
        if q is None:
            return JobPage([], None)
        rows = [
            self._jobs[i]
            for i in q.ids
            if self._jobs[i]["state"] == state.value
            and (tenant is None or self._jobs[i]["tenant"] == tenant)
        ]
        if state == JobState.PENDING:
            rows.sort(key=lambda j: (100 - int(j["priority"])) * _PRIORITY_SPAN + j["seq"])
        elif state == JobState.SCHEDULED:
            rows.sort(key=lambda j: j["scheduled_ms"])
        else:
            rows.sort(key=lambda j: j["finished_ms"] or j["created_ms"], reverse=True)
        start = int(cursor) if cursor else 0
        page = rows[start : start + limit]
        more = start + limit < len(rows)
        return JobPage(
            [decode_lenient(self._fields(j)) for j in page], str(start + limit) if more else None
        )

    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        since = dict(since or {})
        for name in queues:  # absent = only what happens from now on
            if name not in since:
                q = self._queues.get(name)
                since[name] = q.events[-1].id if q and q.events else "0"
        deadline = self.clock.monotonic() + block_ms / 1000

        def collect() -> list[Event]:
            out = [
                e
                for name in queues
                if name in self._queues
                for e in self._queues[name].events
                if int(e.id) > int(since[name])
            ]
            out.sort(key=lambda e: int(e.id))
            return out[:count]

        while True:
            self._event_added.clear()
            events = collect()
            remaining = deadline - self.clock.monotonic()
            if events or remaining <= 0:
                return events
            try:
                await asyncio.wait_for(self._event_added.wait(), remaining)
            except TimeoutError:
                return collect()

    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        out = {}
        for name in queues:
            q = self._queues.get(name)
            out[name] = q.events[-1].id if q and q.events else "0"
        return out

    # --- operations ------------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        self._queue(queue).paused = True

    async def resume(self, queue: str) -> None:
        self._queue(queue).paused = False
        self._wake.set()

    def _retry(self, job: dict[str, Any]) -> None:
        state = JobState(job["state"])
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise InvalidState(
                f"job {job['id']} is {state.value}; only failed or cancelled jobs can be "
                "retried (use promote for a scheduled job)"
            )
        job["attempt"] = 0
        job["finished_ms"] = None
        job["result"] = None
        q = self._queue(job["queue"])
        if job["dedupe_key"] is not None:
            q.dedupe.setdefault(job["dedupe_key"], job["id"])
        self._push_pending(job)
        self._emit(job, "enqueued", retried_by="operator")

    async def retry_job(self, job_id: str) -> Job:
        job = self._get(job_id)
        self._retry(job)
        return decode_job(self._fields(job))

    async def cancel_job(self, job_id: str) -> Job:
        job = self._get(job_id)
        state = JobState(job["state"])
        if state not in ACTIVE_STATES:
            raise InvalidState(
                f"job {job_id} is already {state.value}; only scheduled, pending or running "
                "jobs can be cancelled"
            )
        if state is JobState.RUNNING:
            self._left_running(job)
        self._finish(job, JobState.CANCELLED, self.clock.now_ms())
        self._emit(job, "cancelled")
        return decode_job(self._fields(job))

    async def promote_job(self, job_id: str) -> Job:
        job = self._get(job_id)
        if job["state"] != JobState.SCHEDULED.value:
            raise InvalidState(
                f"job {job_id} is {job['state']}; only scheduled (delayed) jobs can be promoted"
            )
        self._push_pending(job)
        self._emit(job, "promoted")
        return decode_job(self._fields(job))

    async def retry_all(self, queue: str, state: JobState = JobState.FAILED) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        jobs = [self._jobs[i] for i in q.ids if self._jobs[i]["state"] == state.value]
        for job in jobs:
            self._retry(job)
        return len(jobs)

    async def clean(self, queue: str, state: JobState, older_than_ms: int, limit: int) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        cutoff = self.clock.now_ms() - older_than_ms
        victims = [
            i
            for i in q.ids
            if self._jobs[i]["state"] == state.value
            and (self._jobs[i]["finished_ms"] or self._jobs[i]["created_ms"]) <= cutoff
        ][:limit]
        for job_id in victims:
            del self._jobs[job_id]
            del q.ids[job_id]
        return len(victims)

    async def purge(self, queue: str) -> int:
        q = self._queues.get(queue)
        if q is None:
            return 0
        n = len(q.ids)
        for job_id in q.ids:
            del self._jobs[job_id]
        q.ids.clear()
        q.buckets.clear()
        q.scheduled.clear()
        q.dedupe.clear()
        return n

    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        self._workers[worker_id] = (self.clock.now_ms() + ttl_ms, orjson.loads(info_json))

    async def unregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self) -> list[dict[str, Any]]:
        now_ms = self.clock.now_ms()
        return [
            {"id": wid, "expires_ms": exp, **info}
            for wid, (exp, info) in sorted(self._workers.items())
            if exp > now_ms
        ]

    # --- fairness and limits ------------------------------------------------------------------
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits (None: none) and wake idle workers."""
        self._queue(queue).limits = limits or QueueLimits()
        self._wake.set()

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue`."""
        q = self._queues.get(queue)
        return q.limits if q is not None else QueueLimits()

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue`."""
        out: dict[str, int] = {}
        q = self._queues.get(queue)
        for job_id in q.ids if q is not None else ():
            job = self._jobs[job_id]
            if job["state"] == JobState.RUNNING.value and job["tenant"] is not None:
                out[job["tenant"]] = out.get(job["tenant"], 0) + 1
        return out

    # --- scheduler: leadership leases and the schedule store ------------------------------
    def _live_holder(self, name: str, now_ms: int) -> str | None:
        lease = self._leases.get(name)
        return lease[0] if lease is not None and lease[1] > now_ms else None

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        now_ms = self.clock.now_ms()
        if self._live_holder(name, now_ms) not in (None, holder):
            return False
        self._leases[name] = (holder, now_ms + ttl_ms)
        return True

    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        now_ms = self.clock.now_ms()
        if self._live_holder(name, now_ms) != holder:
            return False
        self._leases[name] = (holder, now_ms + ttl_ms)
        return True

    async def release_lease(self, name: str, holder: str) -> bool:
        if self._live_holder(name, self.clock.now_ms()) != holder:
            return False
        del self._leases[name]
        return True

    async def lease_info(self, name: str) -> LeaseInfo | None:
        now_ms = self.clock.now_ms()
        holder = self._live_holder(name, now_ms)
        return None if holder is None else LeaseInfo(holder, self._leases[name][1] - now_ms)

    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        stored = self._schedules.get(name)
        if stored is None:
            self._schedules[name] = StoredSchedule(
                name, spec_json, source, False, self.clock.now_ms(), None
            )
        else:
            stored.spec_json, stored.source = spec_json, source

    async def schedules(self) -> list[StoredSchedule]:
        return [
            StoredSchedule(s.name, s.spec_json, s.source, s.paused, s.since_ms, s.last_run_ms)
            for _, s in sorted(self._schedules.items())
        ]

    async def delete_schedule(self, name: str) -> bool:
        return self._schedules.pop(name, None) is not None

    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        stored = self._schedules.get(name)
        if stored is None:
            return False
        if stored.paused and not paused:
            stored.since_ms = self.clock.now_ms()
        stored.paused = paused
        return True

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        stored = self._schedules.get(name)
        if (
            stored is None
            or self._live_holder(lease, self.clock.now_ms()) != holder
            or (stored.last_run_ms is not None and run_ms <= stored.last_run_ms)
        ):
            return False
        stored.last_run_ms = run_ms
        return True

    # --- dashboard read model -----------------------------------------------------------
    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute (a scan: this engine is for tests)."""
        minutes = max(1, minutes)
        end = self.clock.now_ms()
        out = Throughput(queue, end, [0] * minutes, [0] * minutes)
        q = self._queues.get(queue)
        for job_id in q.ids if q is not None else ():
            job = self._jobs[job_id]
            finished = job["finished_ms"]
            if finished is None or job["state"] not in ("completed", "failed"):
                continue
            # Bucket 0 is the newest minute; a finish "after" now (another process's
            # clock) counts as the newest minute too.
            back = max(0, (end - finished) // 60_000)
            if back < minutes:
                getattr(out, job["state"])[minutes - 1 - back] += 1
        return out


def _message(error_json: str | None) -> str:
    if not error_json:
        return ""
    try:
        return str(orjson.loads(error_json).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""
