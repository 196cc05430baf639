"""The scheduler process: recurring schedules, retention cleanup and stalled-job recovery,
with exactly one active leader across the fleet.

Run two or three (`conveyor scheduler myapp:app`); they elect a leader through a lease on
the engine (engine clock), renewed every lease/3. Followers try to take it every
min(lease/3, 1 s), so when the leader dies another leads within the lease time plus one
try; a leader stopped with SIGTERM releases the lease and a follower leads at its next try.

Exactly-once enqueue per occurrence, without trusting leadership alone:

1. Each occurrence's job id is derived from (schedule name, occurrence time), and enqueue
   is idempotent by id on every engine, so enqueueing an occurrence twice creates one job.
2. Each schedule's `last_run_ms` is advanced only after the enqueue, and only by the
   lease holder (`advance_schedule` is fenced by the lease):

   ```
   leader A: enqueue occ 10:00 ─┐ (A is stalled past its lease here)
   scheduler B:                  ├─ takes the lease, reads last_run = 09:59,
                                 │  enqueues occ 10:00 again → same id → no new job
   leader A: advance(10:00) ────┘  → refused (A no longer holds the lease)
   ```
   A crash between the enqueue and the advance is the same story with A dead.

An occurrence that cannot be enqueued (a task the app does not know, an invalid payload,
the engine refusing the job) does not advance its schedule: the leader stores the error
with it (`record_schedule_error`, fenced by the lease like the advance), tries again at
the next tick, and the next recorded run clears it. `conveyor schedules list` shows it.

`Scheduler.tick(now)` is one step of all of it, so tests drive it with a `FakeClock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .app import Conveyor
from .errors import ConfigError, ConveyorError, EngineUnavailable
from .job import NewJob
from .partitions import fixed_home
from .retention import (
    DEFAULT_BATCH,
    DEFAULT_INTERVAL_S,
    DEFAULT_KEEP_COMPLETED,
    DEFAULT_KEEP_FAILED,
    DEFAULT_MAX_BATCHES,
    Retention,
    RetentionPolicy,
)
from .schedules import LEADER_LEASE, ScheduleSpec, due_occurrences, occurrence_job_id

log = logging.getLogger("conveyor.scheduler")

__all__ = [
    "DEFAULT_KEEP_COMPLETED",
    "DEFAULT_KEEP_FAILED",
    "LEADER_LEASE",
    "Scheduler",
    "TickReport",
]

MAX_OCCURRENCES_PER_TICK = 1000  # per schedule; the rest follow on the next tick
_RETRY_AFTER_ERROR_S = 1.0


@dataclass(slots=True)
class TickReport:
    """What one `Scheduler.tick` did."""

    leader: bool
    enqueued: list[str] = field(default_factory=list)  # ids of jobs created this tick
    recovered: int = 0  # expired leases recovered (stalled jobs)
    cleaned: int = 0  # finished jobs deleted by retention
    next_tick: float = 0.0  # seconds until the next tick has something to do


class Scheduler:
    """Runs an app's schedules (and the runtime ones stored in its engine) as the leader.

    Args:
        app: the app; its code-defined schedules are stored in the engine at start.
        lease_timeout: seconds the leadership lease lives without renewal; a dead
            leader is replaced within about this long.
        keep_completed: seconds completed jobs are kept (None: forever).
        keep_failed: seconds failed and cancelled jobs are kept (None: forever).
        recover_interval: seconds between stalled-job recovery passes.
        clean_interval: longest pause between retention passes (it shrinks while passes
            find a lot to delete; see retention.py).
        clean_batch: jobs deleted per engine call (bounded batches keep locks short).
        clean_max_batches: engine calls per pass; a pass still behind after them runs
            again right after the tick.
        misfire_grace: occurrences at most this old are on time and all fire; older ones
            follow the schedule's `missed` policy (default: twice the lease, so a
            leader change loses nothing).
        close_app: close the app's engine when `run` ends (the CLI owns the app).
        require_noeviction: refuse to run when Redis may evict keys (durability.py);
            otherwise that is logged as an ERROR when the scheduler first connects.

    Raises:
        ConfigError: a value is out of range; the message names the fix.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        lease_timeout: float = 30.0,
        keep_completed: float | None = DEFAULT_KEEP_COMPLETED,
        keep_failed: float | None = DEFAULT_KEEP_FAILED,
        recover_interval: float = 5.0,
        clean_interval: float = DEFAULT_INTERVAL_S,
        clean_batch: int = DEFAULT_BATCH,
        clean_max_batches: int = DEFAULT_MAX_BATCHES,
        misfire_grace: float | None = None,
        close_app: bool = False,
        require_noeviction: bool = False,
    ) -> None:
        _positive("lease_timeout", lease_timeout, "--lease-timeout 30")
        _positive("recover_interval", recover_interval, "recover_interval=5")
        _positive("clean_interval", clean_interval, "clean_interval=60")
        for label, keep in (("keep_completed", keep_completed), ("keep_failed", keep_failed)):
            if keep is not None:
                _positive(label, keep, f"--{label.replace('_', '-')} 24h")
        if clean_batch < 1 or clean_max_batches < 1:
            raise ConfigError("clean_batch and clean_max_batches must be >= 1")
        self.retention = Retention(
            app,
            RetentionPolicy(
                keep_completed, keep_failed, clean_interval, clean_batch, clean_max_batches
            ),
        )
        grace = 2 * lease_timeout if misfire_grace is None else misfire_grace
        if grace < 0:
            raise ConfigError(f"misfire_grace={misfire_grace!r} is invalid: use seconds >= 0")
        self.app = app
        self.lease_timeout = lease_timeout
        self.keep_completed = keep_completed
        self.keep_failed = keep_failed
        self.recover_interval = recover_interval
        self.clean_interval = clean_interval
        self.clean_batch = clean_batch
        self.clean_max_batches = clean_max_batches
        self.misfire_grace = grace
        self.close_app = close_app
        self.require_noeviction = require_noeviction
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._renew_every = lease_timeout / 3
        # Followers try often (cheap: one command) so a released or expired lease is taken
        # quickly; for long leases the lease time dominates the takeover anyway.
        self._follow_every = min(self._renew_every, 1.0)
        self._leader = False
        self._new_term = False  # just became leader: reconcile code schedules once
        self._lease_until = 0.0  # we act as leader only before this (local view)
        self._next_lease_at = 0.0
        self._next_recover_at = 0.0
        self._next_clean_at = 0.0
        self._registered = False
        self._warned: set[str] = set()
        self._stop = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        """Whether this scheduler leads (as of its last tick)."""
        return self._leader

    # --- one step ---------------------------------------------------------------------------
    async def tick(self, now: float | None = None) -> TickReport:
        """Do whatever is due at `now`: take or renew leadership; as the leader, enqueue
        due occurrences, recover stalled jobs and clean old ones.

        Args:
            now: wall-clock seconds (default: the app's clock). Leases themselves run on
                the engine's clock.

        Returns:
            What was done and when the next tick has work.

        Raises:
            EngineUnavailable: the engine cannot be reached (`run` retries).
        """
        now = self.app.clock.now() if now is None else now
        if not self._registered:
            await self.app.check_server(
                role="scheduler", require_noeviction=self.require_noeviction
            )
            await self._register_code_schedules()
        await self._lead(now)
        report = TickReport(leader=self._leader)
        if not self._leader:
            report.next_tick = max(0.0, self._next_lease_at - now)
            return report
        if self._new_term:
            await self._drop_removed_code_schedules()
            self._new_term = False
        next_due = await self._fire(now, report)
        if now >= self._next_recover_at:
            report.recovered = await self.app.recover_expired()
            self._next_recover_at = now + self.recover_interval
            if report.recovered:
                log.info("recovered %d stalled job(s)", report.recovered)
        if now >= self._next_clean_at:
            before = self.retention.deleted
            delay = await self.retention.step(await self.app.queue_names())
            report.cleaned = self.retention.deleted - before
            self._next_clean_at = now + delay
        wake = min(
            next_due,
            self._next_lease_at,
            self._next_recover_at,
            self._next_clean_at,
            now + self._follow_every,  # runtime schedule changes show up within this
        )
        report.next_tick = max(0.0, wake - now)
        return report

    async def _lead(self, now: float) -> None:
        """Renew (leader) or try to take (follower) the lease when it is time to."""
        if self._leader and now >= self._lease_until:
            # Renewals failed for a whole lease (engine unreachable): another may lead now.
            log.warning("leadership lease expired without renewal; stepping down")
            self._leader = False
        if now < self._next_lease_at:
            return
        if self._leader:
            held = await self.app.renew_lease(LEADER_LEASE, self.id, self.lease_timeout)
            if not held:
                log.warning("scheduler %s lost leadership", self.id)
        else:
            held = await self.app.acquire_lease(LEADER_LEASE, self.id, self.lease_timeout)
            if held:
                log.info("scheduler %s is now the leader", self.id)
                self._new_term = True
        self._leader = held
        if held:
            # Counted from before the call returned, so the local view expires no later
            # than the engine's lease.
            self._lease_until = now + self.lease_timeout
        self._next_lease_at = now + (self._renew_every if held else self._follow_every)

    # --- schedules ----------------------------------------------------------------------------
    async def _register_code_schedules(self) -> None:
        """Store the app's code-defined schedules, so `conveyor schedules list` shows them
        and the leader (whichever process it is) runs them."""
        for spec in self.app.schedules.values():
            await self.app.store_schedule(spec, "code")
        self._registered = True

    async def _drop_removed_code_schedules(self) -> None:
        """The leader's code is the truth for code-defined schedules: ones that are
        stored but no longer in its app were deleted from the code."""
        for stored in await self.app.stored_schedules():
            if stored.source == "code" and stored.name not in self.app.schedules:
                log.info("schedule %r is no longer in the app's code; removing it", stored.name)
                await self.app.delete_schedule(stored.name)

    async def _fire(self, now: float, report: TickReport) -> float:
        """Enqueue every owed occurrence (one engine call), then advance each schedule's
        last run, fenced. Returns when the next occurrence of any schedule is due."""
        now_ms = round(now * 1000)
        grace_ms = round(self.misfire_grace * 1000)
        # Per schedule with owed occurrences: its name, its jobs, its latest occurrence.
        batches: list[tuple[str, list[NewJob], int]] = []
        next_due = math.inf
        for stored in await self.app.stored_schedules():
            if stored.paused:
                continue
            try:
                spec = ScheduleSpec.from_json(stored.spec_json)
            except ConfigError as exc:
                self._warn_once(stored.name, f"schedule {stored.name!r} is skipped: {exc}")
                continue
            since = max(stored.since_ms, stored.last_run_ms or 0)
            owed = due_occurrences(
                spec,
                since_ms=since,
                now_ms=now_ms,
                grace_ms=grace_ms,
                limit=MAX_OCCURRENCES_PER_TICK,
            )
            if owed:
                try:
                    batches.append(
                        (spec.name, [self._occurrence_job(spec, at) for at in owed], owed[-1])
                    )
                except EngineUnavailable:
                    raise
                except Exception as exc:  # the task's own checks: unknown, invalid payload...
                    await self._failed(stored.name, exc, owed[-1], now_ms)
                    continue
                since = owed[-1]
            nxt = spec.next_after_ms(max(since, now_ms) if not owed else since)
            if nxt is not None:
                next_due = min(next_due, nxt / 1000)
        try:
            await self._store([job for _, jobs, _ in batches for job in jobs], report)
        except EngineUnavailable:
            raise
        except Exception:
            # The engine refused the batch: store each schedule's jobs on their own, so one
            # bad schedule neither blocks the others nor hides which one it was.
            stored_ok = []
            for name, jobs, last in batches:
                try:
                    await self._store(jobs, report)
                except EngineUnavailable:
                    raise
                except Exception as exc:
                    await self._failed(name, exc, last, now_ms)
                else:
                    stored_ok.append((name, jobs, last))
            batches = stored_ok
        for name, _, at in batches:
            if await self.app.advance_schedule(name, at, lease=LEADER_LEASE, holder=self.id):
                self._warned.discard(name)  # it works again: a new failure is news
            else:
                # Lost the lease (the next renewal steps down) or the schedule was removed;
                # the enqueue above stands either way and a successor's repeat is a no-op.
                log.debug("last run of %r not advanced to %s", name, _iso(at))
        return next_due

    async def _store(self, jobs: list[NewJob], report: TickReport) -> None:
        for job, result in zip(jobs, await self.app.store_built(jobs), strict=True):
            if result.created:
                report.enqueued.append(result.id)
                log.info("enqueued %s (%s)", result.id, job.task)

    async def _failed(self, name: str, exc: Exception, occurrence_ms: int, now_ms: int) -> None:
        """Log why an occurrence of `name` was not enqueued (once per schedule) and store
        it with the schedule (fenced by the lease), where `schedules list` shows it. The
        schedule does not advance: the next tick tries again."""
        self._warn_once(name, f"schedule {name!r} is skipped: {type(exc).__name__}: {exc}")
        await self.app.record_schedule_error(
            name, exc, occurrence_ms, at_ms=now_ms, lease=LEADER_LEASE, holder=self.id
        )

    def _occurrence_job(self, spec: ScheduleSpec, at_ms: int) -> NewJob:
        """The job of one occurrence: validated like any enqueue, with its fixed id."""
        new = self.app.build(spec.task, spec.payload, queue=spec.queue, **spec.options)
        queue = fixed_home(new.queue, new.tenant, new.dedupe_key, f"{spec.name}@{at_ms}")
        return dataclasses.replace(new, queue=queue, id=occurrence_job_id(queue, spec.name, at_ms))

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.error(message)

    # --- process ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Tick until `stop()`; then release leadership (so a follower leads at once).

        Engine outages are logged and retried; they never end the loop.
        """
        try:
            while not self._stop.is_set():
                try:
                    delay = (await self.tick()).next_tick
                except EngineUnavailable as exc:
                    log.warning("engine unavailable, retrying: %s", exc)
                    delay = _RETRY_AFTER_ERROR_S
                except ConfigError:  # e.g. an evicting Redis with require_noeviction
                    raise
                except Exception:  # a bad schedule or a driver error must not end the process
                    log.exception("scheduler tick failed; retrying")
                    delay = _RETRY_AFTER_ERROR_S
                # A couple of ms late rather than early: waking just before an occurrence
                # would only cost an empty tick, but there is no reason to.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay + 0.002)
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Ask `run` to finish (signal handlers call this)."""
        self._stop.set()

    async def _shutdown(self) -> None:
        if self._leader:
            self._leader = False
            try:
                await self.app.release_lease(LEADER_LEASE, self.id)
                log.info("scheduler %s released leadership", self.id)
            except ConveyorError as exc:  # the lease expires on its own
                log.warning("could not release leadership: %s", exc)
        if self.close_app:
            await self.app.close()


def _positive(label: str, value: float, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{label}={value!r} is invalid: use seconds > 0 (e.g. {example})")


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).isoformat()
