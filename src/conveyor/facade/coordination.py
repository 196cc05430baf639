"""The coordination side of the app, for the scheduler (and any process that must be
the only one doing something): leases, stored schedules, expired-lease recovery.

The worker runtime is the one caller that keeps a direct engine handle, for its hot
path; everything else coordinates through these methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from ..engines.base import LeaseInfo, StoredSchedule
from ..schedules import ScheduleSpec
from .core import AppCore


def _ttl_ms(ttl: float) -> int:
    return max(1, round(ttl * 1000))


class Coordination(AppCore):
    """Leases, stored schedules and recovery: what the leading scheduler does."""

    # --- leases ------------------------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take lease `name` for `ttl` seconds (engine clock) if nobody else holds it.

        Returns:
            True if `holder` now holds it (an existing hold is extended), False while
            another holder's lease is live.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        return await (await self.connect()).acquire_lease(name, holder, _ttl_ms(ttl))

    async def renew_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Extend lease `name` to now + `ttl` seconds only if `holder` still holds it.

        Returns:
            False when it expired or another holder took it: stop acting as the holder.

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        return await (await self.connect()).renew_lease(name, holder, _ttl_ms(ttl))

    async def release_lease(self, name: str, holder: str) -> bool:
        """Drop lease `name` if `holder` holds it, so another can take it at once.

        Returns:
            Whether `holder` held it.
        """
        return await (await self.connect()).release_lease(name, holder)

    async def lease_info(self, name: str) -> LeaseInfo | None:
        """Who holds lease `name` (e.g. the schedulers' leadership) and for how much
        longer, or None when it is free."""
        return await (await self.connect()).lease_info(name)

    # --- stored schedules --------------------------------------------------------------
    async def stored_schedules(self) -> list[StoredSchedule]:
        """Every stored schedule (code-defined and runtime), sorted by name, with its
        paused flag, baseline and last run."""
        return await (await self.connect()).schedules()

    async def store_schedule(self, spec: ScheduleSpec, source: str) -> None:
        """Create or update a stored schedule (`source`: "code" or "runtime"); an update
        keeps its paused flag, baseline and last run. Callers validate `spec` first."""
        await (await self.connect()).put_schedule(spec.name, spec.to_json(), source)

    async def delete_schedule(self, name: str) -> bool:
        """Remove a stored schedule; returns whether it existed."""
        return await (await self.connect()).delete_schedule(name)

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Record that the occurrence at `run_ms` was enqueued, fenced by the lease:
        nothing changes unless `holder` holds `lease` and `run_ms` is later than the
        stored last run.

        Returns:
            Whether the last run moved.
        """
        return await (await self.connect()).advance_schedule(
            name, run_ms, lease=lease, holder=holder
        )

    async def record_schedule_error(
        self,
        name: str,
        error: BaseException,
        occurrence_ms: int,
        *,
        at_ms: int,
        lease: str,
        holder: str,
    ) -> bool:
        """Store why the occurrence at `occurrence_ms` of schedule `name` could not be
        enqueued, fenced by the lease like `advance_schedule`; the next recorded run
        clears it. `conveyor schedules list` shows it.

        Args:
            name: the schedule.
            error: what enqueueing the occurrence raised.
            occurrence_ms: the occurrence that failed (epoch ms).
            at_ms: when it failed (epoch ms, the scheduler's tick).
            lease: the leadership lease the caller must hold.
            holder: the caller's holder id.

        Returns:
            Whether it was stored (False: leadership lost or the schedule is gone).
        """
        engine = await self.connect()
        error_json = orjson.dumps(
            {
                "message": str(error) or type(error).__name__,
                "type": type(error).__name__,
                "at_ms": at_ms,
                "occurrence_ms": occurrence_ms,
            }
        ).decode()
        return await engine.record_schedule_error(name, error_json, lease=lease, holder=holder)

    # --- recovery ----------------------------------------------------------------------
    async def recover_expired(self, queues: Sequence[str] | None = None) -> int:
        """Send running jobs whose lease expired back to pending (or to failed when
        their attempts are spent), as workers do before each claim.

        Args:
            queues: the queues to sweep (default: every queue).

        Returns:
            How many jobs were recovered.
        """
        engine = await self.connect()
        names = list(queues) if queues is not None else await engine.queue_names()
        return await engine.recover_expired(names) if names else 0
