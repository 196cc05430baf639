"""What the worker's loops share: the jobs it holds, its counters, its engine health.

`Worker` (runtime.py) is assembled from one class per concern, each in its own module,
all over this state; imports point one way:

    state  <-  running (jobs as tasks)  <-  claiming (the exchange loop)
    state  <-  leases (heartbeat, registration, depth sampling)
    state  <-  shutdown (drain)
    runtime (Worker: start-up, limits, retention, the order of it all) imports them all
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..engines import Outcome, QueueCounts
from ..job import Job
from ..limits import QueueLimits
from ..metrics import Unexported, WorkerMetrics
from ..partitions import Rotation
from ..retention import RetentionPolicy
from .isolation import ProcessPool, ProcessPoolOptions
from .loopwatch import DEFAULT_THRESHOLD_S
from .outcomes import Runner
from .supervision import Supervisors

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..serving import EmbeddedServer

log = logging.getLogger("conveyor.worker")

# Jobs one exchange claims at most. A freed slot waits for the exchange that refills it,
# and that exchange's cost grows with its batch (~40 us of engine time per job on Redis),
# so big batches leave slots idle when jobs end together; small ones cost round trips.
# Measured (bench/w1_quick.py and an io-bound burst, 100 slots): 50 -> W1 15.0k, io
# 3.4k jobs/s; 25 -> 14.6k, 3.8k; 10 -> 8.1k, 4.0k.
_MAX_CLAIM = 25
_EWMA = 0.1  # weight of the newest sample in the running averages of _prefetch


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


class WorkerState:
    """The state `Worker`'s parts share, and the small steps more than one part takes.

    Args: see `Worker` (runtime.py), which is this class with its loops.
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
        # Only a health server exports metrics: without one they are dropped unrecorded,
        # and prometheus_client is never imported (metrics.py).
        self.metrics: WorkerMetrics = Unexported()
        if health_port:
            from ..metrics import Metrics

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
