"""Leases and presence: the heartbeat renews the leases of every job the worker holds
(running or claimed and waiting), re-registers the worker, and samples queue depths.
"""

from __future__ import annotations

import asyncio
import os
import socket

import orjson

from ..engines import Engine
from ..errors import EngineUnavailable
from .sampling import SAMPLE_EVERY_S, sample_depths, sample_interval
from .state import WorkerState


class Heartbeat(WorkerState):
    """The heartbeat loop: leases renewed, worker record refreshed, depths sampled."""

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
            self.last_counts = await sample_depths(engine, self.rotation)
            self.metrics.record_depths(self.last_counts, self.app.clock.now_ms())
        return last_sample

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
