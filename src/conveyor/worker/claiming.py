"""The exchange loop: one loop does all engine traffic for job flow.

Round trips are the cost, so every `exchange` call carries the outcomes that piled up
since the last one *and* claims as many jobs as there are free slots. While a call is in
flight, finished jobs queue their outcomes, so batching grows with load instead of being
configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from ..engines import Engine, HandsOff, Outcome
from ..errors import EngineUnavailable
from .running import JobRunning
from .state import _EWMA, log

_PIPELINE = 2  # exchanges in flight at once (see ClaimLoop._claim_loop)


class ClaimLoop(JobRunning):
    """Claims jobs and reports outcomes in pipelined exchanges; waits when idle."""

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
