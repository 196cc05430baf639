"""The worker: one claim/ack loop, handlers as tasks, a heartbeat, graceful shutdown.

Round trips are the cost, so one loop does all engine traffic for job flow: every
`exchange` call carries the outcomes that piled up since the last one *and* claims
as many jobs as there are free slots. While a call is in flight, finished jobs queue
their outcomes, so batching grows with load instead of being configured.

Timeline of a graceful shutdown (SIGTERM):
  t0  stop() -> the loop stops claiming (in-flight jobs keep running)
  ..  finished jobs' outcomes are still flushed
  t0+shutdown_timeout  jobs still running are cancelled and *released*: they go back
      to pending with their attempt given back (a deploy is not a failure)
  end outcomes flushed, worker record removed, connections closed
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import inspect
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..durability import check_engine
from ..engines import Engine, HandsOff, Outcome, QueueCounts
from ..errors import EngineUnavailable
from ..job import Job
from ..limits import QueueLimits, merge_limits
from ..metrics import Metrics
from ..partitions import Rotation, check_layout, layout, logical, merge_counts, split_limits
from ..retention import Retention, RetentionPolicy
from ..tracing import take_carrier, traced
from . import joblog
from .isolation import ProcessPool, ProcessPoolOptions
from .loopwatch import DEFAULT_THRESHOLD_S, JOB_TASK_PREFIX, LoopWatch, job_describer
from .outcomes import HOOK_KIND, Runner, as_finished, call_hook
from .supervision import Supervisors

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..serving import EmbeddedServer

log = logging.getLogger("conveyor.worker")

_PIPELINE = 2  # exchanges in flight at once (see Worker._claim_loop)
# Jobs one exchange claims at most. A freed slot waits for the exchange that refills it,
# and that exchange's cost grows with its batch (~40 us of engine time per job on Redis),
# so big batches leave slots idle when jobs end together; small ones cost round trips.
# Measured (bench/w1_quick.py and an io-bound burst, 100 slots): 50 -> W1 15.0k, io
# 3.4k jobs/s; 25 -> 14.6k, 3.8k; 10 -> 8.1k, 4.0k.
_MAX_CLAIM = 25
_EWMA = 0.1  # weight of the newest sample in the running averages of _prefetch
SAMPLE_EVERY_S = 5.0  # queue-depth sampling for metrics and /health/detailed
# ... and at most this many queues' depths per second on average: one sample is a counts
# script of ~14 Redis commands, so 50 queues every 5 s was 140 of an idle worker's
# commands/s (issue 15, point 8). A worker on many queues refreshes each less often.
SAMPLED_QUEUES_PER_S = 2.0


def _freeze_heap() -> None:
    """Collect once, then move every object alive now (modules, the app, the engine's
    connections: start-up's whole heap) out of the collector's reach (`gc.freeze`).

    Why: a full (generation 2) collection walks every tracked object, and a worker's
    heap after start-up is mostly imports. Traced W2 workers on Postgres (a loaded
    machine) paused their event loop 19-178 ms for one at start-up and again 5-10 s
    later (after the 500 measured jobs, so not inside W2's window: it is a
    long-running worker's tail), every job due meanwhile waiting; frozen, that second
    one took 0.06 ms. Garbage is collected first, so nothing
    collectable is frozen; only for a process that is the worker (`conveyor worker`),
    since it also freezes whatever else the process holds.
    """
    gc.collect()
    gc.freeze()


def sample_interval(queues: int) -> float:
    """Seconds between two samplings of the depths of a worker's `queues` queues."""
    return max(SAMPLE_EVERY_S, queues / SAMPLED_QUEUES_PER_S)


@dataclass(slots=True)
class WorkerStats:
    """Counters the health server and metrics read (kept off the engine)."""

    processed: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    deferred: int = 0  # rate limited / breaker open: run again later, attempt kept
    lost: int = 0
    engine_ok: bool = True
    engine_error: str | None = None
    last_exchange: float = 0.0
    by_task: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs jobs from `queues` with at most `concurrency` at once.

    Args:
        app: the app whose tasks this worker runs.
        queues: queues to claim from, in priority order.
        concurrency: local limit of jobs running at once.
        lease_timeout: seconds a claim stays valid without a heartbeat; heartbeats
            renew it every third of that.
        shutdown_timeout: seconds in-flight jobs get after `stop()` before release.
        burst: exit once nothing is pending or running (scheduled jobs are left).
        health_port: serve /health/* and /metrics there (None or 0: no server).
        metrics_prefix: prefix of every Prometheus metric name.
        close_app: close the app's engine connections on exit (the CLI does).
        limits: fleet-wide limits for every queue of this worker (CLI flags); its set
            fields override the app's `app.limits(...)` for those queues. Both are
            stored in the engine when the worker starts, and the engine enforces them
            for every worker.
        retention: delete finished jobs of this worker's queues past their keep time
            (retention.py), so memory stays bounded without a scheduler process; None:
            leave them (the CLI passes the configured policy, 24h / 7d by default).
        require_noeviction: refuse to start when Redis may evict keys (durability.py);
            otherwise that is logged as an ERROR at start.
        isolation: the process pool for isolated handlers (`--pool process` and its
            options); a pool is also started, with defaults, when a task is registered
            with `isolation="process"`. See `conveyor.worker.isolation`.
        freeze_heap: once started, take the process's heap out of the garbage
            collector's full passes (`_freeze_heap`); for a process that is the worker
            (`conveyor worker` sets it), not for one that embeds it.

    Lifecycle (the order of runbook 001): connect → health server up → startup
    hooks → process; on stop: stop claiming → finish or release in-flight jobs →
    shutdown hooks → close connections → health server down.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int = 10,
        lease_timeout: float = 30.0,
        shutdown_timeout: float = 30.0,
        burst: bool = False,
        health_port: int | None = None,
        health_host: str = "0.0.0.0",  # probes come from outside the host
        metrics_prefix: str = "conveyor_",
        close_app: bool = False,
        limits: QueueLimits | None = None,
        retention: RetentionPolicy | None = None,
        require_noeviction: bool = False,
        isolation: ProcessPoolOptions | None = None,
        freeze_heap: bool = False,
    ) -> None:
        self.app = app
        self.freeze_heap = freeze_heap
        self.limits = limits
        self.retention = retention
        self.require_noeviction = require_noeviction
        self.queues = tuple(queues)
        # The physical queues claimed, partitions in turn (conveyor.partitions).
        self.rotation = Rotation(self.queues, app.partitions)
        self.concurrency = concurrency
        self.lease_ms = int(lease_timeout * 1000)
        self.shutdown_timeout = shutdown_timeout
        self.burst = burst
        self.health_port = health_port
        self.health_host = health_host
        self.close_app = close_app
        self.metrics = Metrics(metrics_prefix)
        self.metrics.concurrency.set(concurrency)
        self.last_counts: list[QueueCounts] = []
        self._health: EmbeddedServer | None = None
        # Called once the engine answered, the health server listens and the startup
        # hooks ran: the CLI prints its start-up line (runbook 003's ready signal) here.
        self.on_ready: Callable[[], None] | None = None
        # An async handler that blocks the loop this long is logged (worker/loopwatch.py).
        self.block_warn_s = DEFAULT_THRESHOLD_S
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self.stopping = False
        self._running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._outbox: list[Outcome] = []
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._releasing = False
        # The claim loop's state (see _claim_loop): slots promised to exchanges in flight,
        # whether the last claim found nothing, and the engine-down backoff.
        self._batch = max(1, min((concurrency + 1) // 2, _MAX_CLAIM))
        self._reserved = 0
        self._in_flight = 0
        self._empty = False
        # The last claim found nothing: the next one goes alone (an idle worker's periodic
        # look at its queues is one exchange per queue, not _PIPELINE of them).
        self._probing = True
        self._next_due_ms: int | None = None
        self._retry_at = 0.0
        # Claimed jobs waiting for a slot (see _prefetch), and the running averages it uses.
        self._ready: collections.deque[Job] = collections.deque()
        self._round_trip = 0.0  # seconds per exchange
        self._job_time = 0.0  # seconds per job
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="conveyor-job")
        self.process_pool = ProcessPool.for_worker(app, isolation)
        self._runner = Runner(app, self._pool, self.id, process_pool=self.process_pool)
        # Each background loop reports here; readiness is 503 while one is failing.
        self.loops = Supervisors()
        self._claiming = self.loops.add("claim")
        self._beating = self.loops.add("heartbeat")
        # Idle workers wake at least this often to recover expired leases of crashed peers.
        self._maintenance_s = max(0.2, min(5.0, lease_timeout / 3))

    @property
    def in_flight(self) -> int:
        """Jobs currently held by this worker."""
        return len(self._running)

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent; safe from a signal handler)."""
        if not self.stopping:
            log.info("worker %s stopping: no new claims, %d in flight", self.id, self.in_flight)
        self.stopping = True
        self._wake.set()

    @property
    def health_address(self) -> tuple[str, int] | None:
        """(host, port) of the running health server, if any."""
        return (self.health_host, self._health.port) if self._health else None

    async def run(self) -> None:
        """Process jobs until `stop()` (or, in burst mode, until the queues are empty).

        Raises:
            EngineUnavailable: the engine cannot be reached at start-up.
            ConfigError: the health port cannot be bound, Redis may evict keys and
                `require_noeviction` is set, or the process pool's children cannot
                import the app.
        """
        # The worker is the one caller that keeps a direct engine handle (everything else
        # goes through the app facade): exchange, heartbeats and progress are its hot
        # path, where a facade hop per call would cost without adding a rule.
        engine = await self.app.connect()
        check_engine(engine, role="worker", require_noeviction=self.require_noeviction)
        await self._apply_limits(engine)
        if isinstance(engine, HandsOff):  # one-hop pickup: idle, it is handed new jobs
            engine.accept_handoffs(self.id, lambda: self._take_handed(engine))
        if self.health_port:
            # Imported only here: starlette and uvicorn are most of a worker's start-up
            # when it runs no health server (issue 15; tests/unit/test_worker_imports.py).
            from ..health import build_health_app
            from ..serving import EmbeddedServer

            self._health = EmbeddedServer(
                build_health_app(self), self.health_host, self.health_port
            )
            await self._health.start()
        heartbeat: asyncio.Task[None] | None = None
        cleaner: asyncio.Task[None] | None = None
        watch = LoopWatch(job_describer(self._running, self.app.tasks), self.block_warn_s)
        watch.start()
        try:
            if self.process_pool is not None:
                await self.process_pool.start()
            for hook in self.app.startup_hooks:
                await call_hook(hook)
            if self.on_ready is not None:
                self.on_ready()
            if self.freeze_heap:
                _freeze_heap()
            heartbeat = asyncio.create_task(self._heartbeat_loop(engine), name="conveyor-beat")
            if self.retention is not None and self.retention.enabled:
                cleaner = asyncio.create_task(self._retention_loop(self.retention))
            await self._claim_loop(engine)
            await self._drain(engine)
            for hook in self.app.shutdown_hooks:
                try:
                    await call_hook(hook)
                except Exception:
                    log.exception("shutdown hook %r failed", hook)
        finally:
            await watch.stop()
            for loop_task in (heartbeat, cleaner):
                if loop_task is not None:
                    loop_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await loop_task
            if self.process_pool is not None:  # after _drain: no job is running now
                await self.process_pool.close()
            with contextlib.suppress(EngineUnavailable):
                await engine.unregister_worker(self.id)
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self.close_app:
                await self.app.close()
            if self._health is not None:
                await self._health.stop()
                self._health = None
            self._stopped.set()

    def limits_for(self, queue: str) -> QueueLimits | None:
        """The limits this worker stores for `queue` at start: the app's, with the fields
        the worker's own `limits` sets replacing them (None: leave the engine's alone)."""
        code, flags = self.app.queue_limits.get(queue), self.limits
        if code is None and (flags is None or flags.empty):
            return None
        return merge_limits(code, flags)

    async def _apply_limits(self, engine: Engine) -> None:
        for queue in self.queues:
            count = self.app.partitions.count(queue)
            await check_layout(engine, queue, count)
            limits = self.limits_for(queue)
            if limits is not None:
                shares = split_limits(limits, count)
                for name, share in zip(layout(queue, count), shares, strict=True):
                    await engine.set_limits(name, share)
                log.info("queue %s limits (fleet-wide): %s", queue, limits.to_dict())

    # --- the loop ------------------------------------------------------------------------
    async def _claim_loop(self, engine: Engine) -> None:
        """Keep up to `_PIPELINE` exchanges in flight, each claiming at most half the slots.

        One exchange at a time would leave the worker idle while the engine works and the
        engine idle while the worker runs the batch it got. Two in flight overlap them:

            engine:  [exchange A ][exchange B ][exchange C ]...
            worker:               [run A's jobs][run B's jobs]...

        and jobs that take the same time (an io-bound burst) stop finishing in one wave,
        whose outcomes and claims would otherwise all wait for the same round trip. Slots
        an exchange may fill are reserved when it is sent, so `concurrency` always holds.
        """
        calls: set[asyncio.Task[None]] = set()
        loop = asyncio.get_running_loop()
        try:
            while not self.stopping:
                wait = self._retry_at - loop.time()
                if wait > 0:  # the last exchange failed: back off before trying again
                    await self._sleep_or_stop(wait)
                    continue
                free = (
                    self.concurrency
                    + self._prefetch()
                    - len(self._running)
                    - len(self._ready)
                    - self._reserved
                )
                claim = free > 0 and not self._empty
                in_flight_max = 1 if self._probing else _PIPELINE
                if self._in_flight < in_flight_max and (claim or self._outbox):
                    outcomes, self._outbox = self._outbox, []
                    limit = min(max(free, 0), self._batch)
                    self._reserved += limit
                    self._in_flight += 1
                    call = asyncio.create_task(self._exchange(engine, outcomes, limit))
                    calls.add(call)
                    call.add_done_callback(calls.discard)
                    continue
                if not self._in_flight and self._empty and not self._outbox:
                    if self.burst and not self._running and not self._ready:
                        log.info("burst: queues %s are empty, exiting", ",".join(self.queues))
                        return
                    self._empty = False  # claim again after the wait, whatever woke us
                    await self._idle(engine, self._next_due_ms)
                    continue
                if self._empty and free > 0 and self._in_flight < _PIPELINE:
                    # The last claim found nothing and an exchange (reporting outcomes) is
                    # in flight. A job enqueued now is claimed at once, by a second
                    # exchange, instead of after that one's commit (a WAL flush on
                    # Postgres: W2's pickup waited for the previous job's completion).
                    if await self._local_or_engine_wake(engine):
                        self._empty = self._probing = False
                    continue
                self._wake.clear()
                await self._wake.wait()
        finally:
            if calls:  # their claimed jobs are started, so drain sees them
                await asyncio.wait(calls)

    async def _exchange(self, engine: Engine, outcomes: list[Outcome], limit: int) -> None:
        """One exchange call (a task of `_claim_loop`): report, claim, start what it got."""
        sent = time.perf_counter()
        try:
            result = await engine.exchange(
                outcomes,
                queues=self.rotation.next(limit > 0),
                limit=limit,
                worker_id=self.id,
                lease_ms=self.lease_ms,
            )
        except Exception as exc:
            # Kept: acknowledgements are never dropped. An outage (EngineUnavailable,
            # EngineFull) or an error nobody expected: the claim loop backs off and tries
            # again, and readiness names the error until an exchange gets through.
            self._outbox[:0] = outcomes
            if isinstance(exc, EngineUnavailable):
                self._engine_down(exc)
            self._retry_at = asyncio.get_running_loop().time() + self._claiming.failed(exc)
            return
        finally:
            # Counted here, not by the task's done callback: that runs after the claim
            # loop has already woken up to look at the count.
            self._reserved -= limit
            self._in_flight -= 1
            self._wake.set()
        self._claiming.ok()
        self._round_trip += (time.perf_counter() - sent - self._round_trip) * _EWMA
        self._engine_up()
        self._lost(result.lost)
        if result.recovered:
            self.metrics.stalled.inc(result.recovered)
        self._ready.extend(result.jobs)
        self._start_ready()
        if limit > 0:
            # Nothing claimable now: wait for a wake-up instead of asking again at once.
            self._empty = not result.jobs
            # Fewer jobs than asked for: the queues are (nearly) drained, so the next
            # claim goes alone. Two at once then only found nothing twice (W2: four
            # exchanges per job instead of two, the completion waiting behind them).
            self._probing = len(result.jobs) < limit
            self._next_due_ms = result.next_due_ms

    async def _idle(self, engine: Engine, next_due_ms: int | None) -> None:
        """Wait for work: a wake-up from the engine, a finished job, a due job, or stop."""
        timeout = self._maintenance_s
        if next_due_ms is not None:
            timeout = min(timeout, next_due_ms / 1000)
        self._wake.clear()
        if self._outbox or self.stopping:
            return
        local = asyncio.ensure_future(self._wake.wait())
        remote = asyncio.ensure_future(engine.wait_for_jobs(self.rotation.all, timeout))
        try:
            await asyncio.wait(
                (local, remote), timeout=timeout + 1, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (local, remote):
                fut.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await remote
                except EngineUnavailable:
                    pass  # the next exchange notices and backs off
                except Exception as exc:  # nor does anything else end the claim loop
                    log.warning("waiting for jobs failed (%s: %s)", type(exc).__name__, exc)
            with contextlib.suppress(asyncio.CancelledError):
                await local
        if isinstance(engine, HandsOff):
            self._take_handed(engine)

    async def _local_or_engine_wake(self, engine: Engine) -> bool:
        """Wait for the claim loop's own wake-up (an exchange returned, a job finished) or
        the engine's (work may be claimable); True when the engine's came."""
        self._wake.clear()
        local = asyncio.ensure_future(self._wake.wait())
        remote = asyncio.ensure_future(engine.wait_for_jobs(self.rotation.all, self._maintenance_s))
        try:
            await asyncio.wait((local, remote), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (local, remote):
                fut.cancel()
            for fut in (local, remote):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fut  # an engine error: the exchange in flight notices it
        return remote.done() and not remote.cancelled() and remote.exception() is None

    def _take_handed(self, engine: HandsOff) -> None:
        """Start the jobs handed to this worker, straight from the reply that brought
        them (the engine calls this; not once shutdown began: _drain hands them back)."""
        if not self.stopping:
            self._ready.extend(engine.take_handed(self.id))
            self._start_ready()

    async def _sleep_or_stop(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _prefetch(self) -> int:
        """Jobs to hold claimed beyond the free slots: as many as the running ones will
        finish, by the averages so far, while the exchanges in flight complete, so a slot
        that frees up starts its next job at once instead of waiting for a refill. Short
        jobs get up to one batch; jobs much longer than a round trip get none, so long work
        is never parked here while another worker sits idle. Waiting jobs hold leases like
        running ones: heartbeats renew them and shutdown hands them back."""
        if self._job_time <= 0:
            return 0
        ahead = int(_PIPELINE * self.concurrency * self._round_trip / self._job_time)
        return min(self._batch, ahead)

    async def _drain(self, engine: Engine) -> None:
        """Shutdown: hand back claimed jobs not yet started, let in-flight jobs finish,
        release the rest, flush outcomes."""
        if isinstance(engine, HandsOff):
            with contextlib.suppress(EngineUnavailable):  # else their leases expire
                self._ready.extend(await engine.stop_handoffs(self.id))
        while self._ready:
            job = self._ready.popleft()
            self._outbox.append(Outcome(job.id, str(job.token), "release"))
            self.stats.released += 1
        if self._running:
            tasks = [t for _, t in self._running.values()]
            _, pending = await asyncio.wait(tasks, timeout=self.shutdown_timeout)
            if pending:
                log.warning(
                    "releasing %d unfinished job(s) after %.1fs shutdown timeout",
                    len(pending),
                    self.shutdown_timeout,
                )
                self._releasing = True
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        for attempt in range(5):
            if not self._outbox:
                break
            outcomes, self._outbox = self._outbox, []
            try:
                result = await engine.exchange(
                    outcomes,
                    queues=self.rotation.all,
                    limit=0,
                    worker_id=self.id,
                    lease_ms=self.lease_ms,
                )
                self._lost(result.lost)
            except EngineUnavailable as exc:
                self._outbox[:0] = outcomes
                self._engine_down(exc)
                await asyncio.sleep(0.2 * 2**attempt)
        if self._outbox:
            log.error(
                "could not report %d outcome(s) before exit; their leases will expire "
                "and the jobs will run again",
                len(self._outbox),
            )

    # --- running jobs ------------------------------------------------------------------
    def _start_ready(self) -> None:
        """Start claimed jobs while slots are free (not once shutdown began: _drain hands
        the waiting ones back)."""
        while self._ready and len(self._running) < self.concurrency and not self.stopping:
            self._start(self._ready.popleft())

    def _start(self, job: Job) -> None:
        job._reporter = self._report_progress
        job.queue = logical(job.queue)  # the handler sees the queue, not its partition
        job._app = self.app  # job.children_results() / child_values() in a flow's parent
        task = asyncio.create_task(self._execute(job), name=f"{JOB_TASK_PREFIX}{job.id}")
        self._running[job.id] = (job, task)
        self.metrics.in_flight.set(len(self._running))

    async def _execute(self, job: Job) -> None:
        outcome: Outcome
        hooks = self.app.job_hooks
        carrier = take_carrier(job)  # even untraced: the handler never sees it
        joblog.started(job)
        if hooks:
            await self._fire("started", job)
        started = self.app.clock.monotonic()
        began = time.perf_counter()  # real time for the prefetch estimate, whatever the clock
        tracing = self.app.tracing
        try:
            if tracing is None:
                outcome = await self._runner.outcome(job)
            else:
                outcome = await traced(tracing, job, carrier, self._runner.outcome)
        except asyncio.CancelledError:
            if not self._releasing:  # lease lost: the job is someone else's now
                self._running.pop(job.id, None)
                self.metrics.in_flight.set(len(self._running))
                self._start_ready()
                self._wake.set()  # a slot is free: a full worker's claim loop waits for it
                raise
            outcome = Outcome(job.id, str(job.token), "release")
        self._running.pop(job.id, None)
        self._outbox.append(outcome)
        self._wake.set()
        self._job_time += (time.perf_counter() - began - self._job_time) * _EWMA
        self._start_ready()
        self._count(outcome.kind, job)
        duration = self.app.clock.monotonic() - started
        self.metrics.record_outcome(outcome.kind, job.queue, job.task, duration)
        joblog.finished(job, outcome, duration)
        if hooks:
            await self._fire(HOOK_KIND[outcome.kind], as_finished(job, outcome))

    async def _fire(self, kind: str, job: Job) -> None:
        for hook in self.app.job_hooks.get(kind, ()):
            try:
                if inspect.iscoroutinefunction(hook):
                    await hook(job)
                else:
                    await asyncio.get_running_loop().run_in_executor(self._pool, hook, job)
            except Exception:
                log.exception("%s hook %r failed for job %s", kind, hook, job.id)

    def _count(self, kind: str, job: Job) -> None:
        if kind == "complete":
            self.stats.processed += 1
        elif kind == "fail":
            self.stats.failed += 1
        elif kind == "retry":
            self.stats.retried += 1
        elif kind == "defer":
            self.stats.deferred += 1
        else:
            self.stats.released += 1

    async def _report_progress(self, job: Job, value: Any) -> None:
        engine = await self.app.connect()
        await engine.set_progress(job.id, str(job.token), orjson.dumps(value).decode())

    # --- leases ---------------------------------------------------------------------------
    async def _heartbeat_loop(self, engine: Engine) -> None:
        """Renew leases every third of the lease; sample queue depths for metrics.

        Never ends on an error: a failed turn is logged and retried with backoff (at
        most one interval apart), and readiness names the error meanwhile (supervision.py).
        """
        interval = min(self.lease_ms / 3000, SAMPLE_EVERY_S)
        last_sample = -sample_interval(len(self.rotation.all))
        while True:
            wait = interval
            try:
                last_sample = await self._beat(engine, last_sample)
                self._beating.ok()
                self._engine_up()
            except Exception as exc:
                if isinstance(exc, EngineUnavailable):
                    self._engine_down(exc)
                wait = min(interval, self._beating.failed(exc))
            self.metrics.in_flight.set(len(self._running))
            await asyncio.sleep(wait)

    async def _beat(self, engine: Engine, last_sample: float) -> float:
        """One heartbeat turn; returns when queue depths were last sampled."""
        if self._running or self._ready:
            leases = [(jid, str(job.token)) for jid, (job, _) in self._running.items()]
            leases += [(job.id, str(job.token)) for job in self._ready]
            self._lost(await engine.heartbeat(leases, lease_ms=self.lease_ms))
        await engine.register_worker(self.id, self._info(), ttl_ms=self.lease_ms)
        now = self.app.clock.monotonic()
        # Depths are for the health server's /metrics and /health/detailed: without one,
        # sampling every queue each SAMPLE_EVERY_S was most of an idle worker's Redis
        # commands (issue 15: 50 queues, bench/RESULTS.md).
        every = sample_interval(len(self.rotation.all))  # engine queues: partitions count
        if self._health is not None and now - last_sample >= every:
            last_sample = now
            self.last_counts = [
                merge_counts(queue, [await engine.counts(name) for name in names])
                for queue, names in self.rotation.groups
            ]
            self.metrics.record_depths(self.last_counts, self.app.clock.now_ms())
        return last_sample

    async def _retention_loop(self, policy: RetentionPolicy) -> None:
        """Clean this worker's queues on retention's adaptive schedule (retention.py).

        The first pass waits a random part of a second, so workers started together do
        not all clean at the same moment; failures back off like the other loops.
        """
        cleaner = Retention(self.app, policy)
        supervisor = self.loops.add("retention")
        delay = random.uniform(0.2, 1.0)
        while True:
            await asyncio.sleep(delay)
            try:
                delay = await cleaner.step(self.queues)  # the facade cleans every partition
                supervisor.ok()
            except Exception as exc:
                delay = supervisor.failed(exc)

    def _lost(self, job_ids: Sequence[str]) -> None:
        """Leases we no longer hold: stop the work, the job belongs to someone else."""
        for job_id in job_ids:
            self.stats.lost += 1
            entry = self._running.get(job_id)
            log.warning(
                "lease lost for job %s (expired or cancelled); its result is discarded", job_id
            )
            if entry is not None:
                entry[1].cancel()
            else:
                self._ready = collections.deque(j for j in self._ready if j.id != job_id)

    def _info(self) -> str:
        return orjson.dumps(
            {
                "queues": list(self.queues),
                "concurrency": self.concurrency,
                "in_flight": self.in_flight,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "processed": self.stats.processed,
                "failed": self.stats.failed,
                "last_seen": self.app.clock.now(),
            }
        ).decode()

    def _engine_down(self, exc: Exception) -> None:
        self.metrics.engine_up.set(0)
        if self.stats.engine_ok:
            log.error("engine unavailable: %s", exc)
        self.stats.engine_ok = False
        self.stats.engine_error = str(exc)

    def _engine_up(self) -> None:
        self.metrics.engine_up.set(1)
        if not self.stats.engine_ok:
            log.info("engine reachable again")
        self.stats.engine_ok = True
        self.stats.engine_error = None
        self.stats.last_exchange = self.app.clock.monotonic()
