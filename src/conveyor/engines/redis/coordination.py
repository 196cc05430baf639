"""Coordination on Redis: the worker registry, the scheduler's leadership leases and
the schedule store.

Worker records and schedules use the engine's clock (Redis TIME, or a test clock);
leases use Redis's own key expiry (PX), so they follow the Redis clock. Every key here
lives under the global tag `{<prefix>}` (see keys.py): the fenced `advance_schedule`
touches a lease and a schedule in one script, legal on Redis Cluster.
"""

from __future__ import annotations

from typing import Any

from ..base import LeaseInfo, StoredSchedule
from ..workers import worker_entry
from .connection import RedisBase, driver_errors


class RedisCoordination(RedisBase):
    """Workers, leases and schedules (see `conveyor.engines.base`)."""

    @driver_errors
    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive for `ttl_ms` (Redis clock) with its info."""
        await self._scripts["register_worker"](
            keys=[self._keys.workers, self._keys.workers_info],
            args=[worker_id, info_json, ttl_ms, self._now()],
        )

    @driver_errors
    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""
        await self._scripts["unregister_worker"](
            keys=[self._keys.workers, self._keys.workers_info], args=[worker_id]
        )

    @driver_errors
    async def workers(self) -> list[dict[str, Any]]:
        """Live workers, each with its info, `id`, `expires_ms` and `last_seen` (seconds,
        the Redis clock at its last registration: it wins over anything in the info)."""
        flat = await self._scripts["workers"](
            keys=[self._keys.workers, self._keys.workers_info], args=[self._now()]
        )
        out: list[dict[str, Any]] = []
        for i in range(0, len(flat), 3):
            worker_id, expires, value = flat[i : i + 3]
            seen, _, info_json = value.partition("\n")
            out.append(
                worker_entry(
                    worker_id, info_json, last_seen_ms=int(seen or 0), expires_ms=int(expires)
                )
            )
        return sorted(out, key=lambda w: str(w["id"]))

    @driver_errors
    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` (SET NX PX on the Redis clock) or extend it if already ours."""
        script = self._global_script("lease_acquire")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder, ttl_ms]))

    @driver_errors
    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` only while `holder` holds it (compare-and-set)."""
        script = self._global_script("lease_renew")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder, ttl_ms]))

    @driver_errors
    async def release_lease(self, name: str, holder: str) -> bool:
        """Delete lease `name` if `holder` holds it (compare-and-delete)."""
        script = self._global_script("lease_release")
        return bool(await script(keys=[self._keys.lease(name)], args=[holder]))

    @driver_errors
    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining milliseconds (PTTL)."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.get(self._keys.lease(name))
            pipe.pttl(self._keys.lease(name))
            holder, ttl = await pipe.execute()
        return None if holder is None or ttl < 0 else LeaseInfo(str(holder), int(ttl))

    @driver_errors
    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule (an update keeps paused, since and last run)."""
        await self._global_script("schedule_put")(
            keys=[self._keys.schedule_names(), self._keys.schedule(name)],
            args=[name, spec_json, source, self._now()],
        )

    @driver_errors
    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, by name (one SMEMBERS, then one pipelined read)."""
        # decode_responses=True: members are str (redis-py types them bytes | str).
        names = sorted(str(n) for n in await self._client.smembers(self._keys.schedule_names()))
        if not names:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.schedule(name))
            rows = await pipe.execute()
        out = []
        for name, row in zip(names, rows, strict=True):
            if not row:  # deleted between the two reads
                continue
            last = row.get("last_run_ms")
            out.append(
                StoredSchedule(
                    name=name,
                    spec_json=row.get("spec", ""),
                    source=row.get("source", "runtime"),
                    paused=row.get("paused") == "1",
                    since_ms=int(row.get("since_ms") or 0),
                    last_run_ms=int(last) if last else None,
                    last_error=row.get("last_error") or None,
                )
            )
        return out

    @driver_errors
    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        return bool(
            await self._global_script("schedule_delete")(
                keys=[self._keys.schedule_names(), self._keys.schedule(name)], args=[name]
            )
        )

    @driver_errors
    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; resuming a paused schedule moves its baseline to now."""
        return bool(
            await self._global_script("schedule_pause")(
                keys=[self._keys.schedule(name)], args=["1" if paused else "0", self._now()]
            )
        )

    @driver_errors
    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Set `last_run_ms` if `holder` holds the live `lease` and `run_ms` is later."""
        return bool(
            await self._global_script("schedule_advance")(
                keys=[self._keys.lease(lease), self._keys.schedule(name)], args=[holder, run_ms]
            )
        )

    @driver_errors
    async def record_schedule_error(
        self, name: str, error_json: str, *, lease: str, holder: str
    ) -> bool:
        """Store a schedule's last error if `holder` holds the live `lease`."""
        return bool(
            await self._global_script("schedule_error")(
                keys=[self._keys.lease(lease), self._keys.schedule(name)], args=[holder, error_json]
            )
        )
