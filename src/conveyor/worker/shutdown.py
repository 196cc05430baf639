"""Shutdown: what happens to the jobs a worker holds once it stops claiming.

Timeline of a graceful shutdown (SIGTERM):
  t0  stop() -> the loop stops claiming (in-flight jobs keep running)
  ..  finished jobs' outcomes are still flushed
  t0+shutdown_timeout  jobs still running are cancelled and *released*: they go back
      to pending with their attempt given back (a deploy is not a failure)
  end outcomes flushed, worker record removed, connections closed
"""

from __future__ import annotations

import asyncio
import contextlib

from ..engines import Engine, HandsOff, Outcome
from ..errors import EngineUnavailable
from .state import WorkerState, log


class Drain(WorkerState):
    """Hands back, finishes or releases held jobs, then flushes their outcomes."""

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
