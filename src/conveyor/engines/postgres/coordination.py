"""Coordination on Postgres: named leases, the schedule store, the worker registry and
fleet-wide limits.

Each lease change is one statement (an upsert with a condition, or a fenced UPDATE),
so check-then-set is atomic across processes without explicit locks.
"""

from __future__ import annotations

from typing import Any

from ...limits import QueueLimits
from ..values import LeaseInfo, StoredSchedule
from ..workers import worker_entry
from .connection import Conn, PgCore


class PgCoordination(PgCore):
    """Leases, schedules, workers and limits."""

    # --- leases ---------------------------------------------------------------------------
    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` if it is free, expired or already ours (see the protocol)."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(
                self.q["lease_acquire"],
                {"name": name, "holder": holder, "until": now + ttl_ms, "now": now},
            )
            return await cur.fetchone() is not None

        return await self._run(tx)

    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` only while `holder` holds it and it has not expired."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(self.q["lease_renew"], (now + ttl_ms, name, holder, now))
            return cur.rowcount == 1

        return await self._run(tx)

    async def release_lease(self, name: str, holder: str) -> bool:
        """Drop lease `name` if `holder` holds it."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(self.q["lease_release"], (name, holder, now))
            return cur.rowcount == 1

        return await self._run(tx)

    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining milliseconds."""

        async def read(conn: Conn) -> LeaseInfo | None:
            now = await self._now(conn)
            cur = await conn.execute(self.q["lease_holder"], (name, now))
            row = await cur.fetchone()
            return None if row is None else LeaseInfo(str(row[0]), int(row[1]) - now)

        return await self._run(read)

    # --- schedules ------------------------------------------------------------------------
    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule (an update keeps paused, since and last run)."""

        async def tx(conn: Conn) -> None:
            now = await self._now(conn)
            await conn.execute(self.q["schedule_put"], (name, spec_json, source, now))

        await self._run(tx)

    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, by name."""

        async def read(conn: Conn) -> list[StoredSchedule]:
            cur = await conn.execute(self.q["schedules"])
            return [
                StoredSchedule(name, spec, source, bool(paused), int(since), last, error)
                for name, spec, source, paused, since, last, error in await cur.fetchall()
            ]

        return await self._run(read)

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""

        async def tx(conn: Conn) -> bool:
            cur = await conn.execute(self.q["schedule_delete"], (name,))
            return cur.rowcount == 1

        return await self._run(tx)

    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; resuming a paused schedule moves its baseline to now."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(
                self.q["schedule_pause"], {"paused": paused, "now": now, "name": name}
            )
            return cur.rowcount == 1

        return await self._run(tx)

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Set `last_run_ms` if `holder` holds the live `lease` and `run_ms` is later."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(
                self.q["schedule_advance"],
                {"run": run_ms, "name": name, "lease": lease, "holder": holder, "now": now},
            )
            return cur.rowcount == 1

        return await self._run(tx)

    async def record_schedule_error(
        self, name: str, error_json: str, *, lease: str, holder: str
    ) -> bool:
        """Store a schedule's last error if `holder` holds the live `lease`."""

        async def tx(conn: Conn) -> bool:
            now = await self._now(conn)
            cur = await conn.execute(
                self.q["schedule_error"],
                {"error": error_json, "name": name, "lease": lease, "holder": holder, "now": now},
            )
            return cur.rowcount == 1

        return await self._run(tx)

    # --- the worker registry --------------------------------------------------------------
    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive for `ttl_ms`, stamped with the engine's clock."""

        async def tx(conn: Conn) -> None:
            now = await self._now(conn)
            await conn.execute(self.q["register_worker_prune"], (now,))
            await conn.execute(self.q["register_worker"], (worker_id, info_json, now, now + ttl_ms))

        await self._run(tx)

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""

        async def tx(conn: Conn) -> None:
            await conn.execute(self.q["unregister_worker"], (worker_id,))

        await self._run(tx)

    async def workers(self) -> list[dict[str, Any]]:
        """Workers whose record has not expired: their info, `id`, `expires_ms` and
        `last_seen` (s, the engine's clock: it overrides one in the worker's info)."""

        async def read(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(self.q["live_workers"], (await self._now(conn),))
            return list(await cur.fetchall())

        return [
            worker_entry(wid, info, last_seen_ms=last_seen_ms, expires_ms=expires_ms)
            for wid, info, last_seen_ms, expires_ms in await self._run(read)
        ]

    # --- limits ---------------------------------------------------------------------------
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits for the whole fleet (None: no limits) and wake workers."""

        async def tx(conn: Conn) -> None:
            if limits is None or limits.empty:
                await conn.execute(self.q["delete_limits"], (queue,))
            else:
                await conn.execute(self.q["put_limits"], {"queue": queue, **limits.fields()})
            await self._send(conn, jobs=True)

        await self._run(tx)
        self._notify(jobs=True)

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty when it has none)."""

        async def read(conn: Conn) -> QueueLimits:
            cur = await conn.execute(self.q["read_limits"])
            for row in await cur.fetchall():
                if row[0] == queue:
                    return QueueLimits(*row[1:])
            return QueueLimits()

        return await self._run(read)

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (what claims count tenant_concurrency against)."""

        async def read(conn: Conn) -> dict[str, int]:
            cur = await conn.execute(self.q["tenant_running"], (queue,))
            return {str(t): int(n) for t, n in await cur.fetchall()}

        return await self._run(read)
