"""The worker: one claim/ack loop, handlers as tasks, a heartbeat, graceful shutdown.

`Worker` is assembled from one part per concern (state.py lists them): the exchange loop
(claiming.py), running jobs (running.py), leases and registration (leases.py, with
depth sampling in sampling.py) and shutdown (shutdown.py). This module holds the order
in which a worker starts and stops, and the queue limits and retention it applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random

from ..durability import check_engine
from ..engines import Engine, HandsOff
from ..errors import EngineUnavailable
from ..limits import QueueLimits, merge_limits
from ..partitions import check_layout, layout, split_limits
from ..retention import Retention, RetentionPolicy
from .claiming import ClaimLoop
from .leases import Heartbeat
from .loopwatch import LoopWatch, job_describer
from .outcomes import call_hook
from .sampling import SAMPLE_EVERY_S, SAMPLED_QUEUES_PER_S, sample_interval
from .shutdown import Drain
from .state import WorkerStats, log

# Importable from here as before the split (tests/unit/test_worker_idle.py and users).
__all__ = ["SAMPLED_QUEUES_PER_S", "SAMPLE_EVERY_S", "Worker", "WorkerStats", "sample_interval"]


class Worker(ClaimLoop, Heartbeat, Drain):
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


def _freeze_heap() -> None:
    """Collect once, then move every object alive now (modules, the app, the engine's
    connections: start-up's whole heap) out of the collector's reach (`gc.freeze`).

    Why: a full (generation 2) collection walks every tracked object, and a worker's
    heap after start-up is mostly imports. Traced W2 workers on Postgres (a loaded
    machine) paused their event loop 19-178 ms for one at start-up and again 5-10 s
    later (after the 500 measured jobs, so not inside W2's window: it is a
    long-running worker's tail), every job due meanwhile waiting; frozen, that second
    one took 0.06 ms. Garbage is collected first, so nothing collectable is frozen;
    only for a process that is the worker (`conveyor worker`), since it also freezes
    whatever else the process holds.
    """
    gc.collect()
    gc.freeze()
