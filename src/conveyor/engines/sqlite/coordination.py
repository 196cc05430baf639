"""Coordination on SQLite: named leases, the schedule store, the worker registry and
fleet-wide limits.

Each lease write is one ``BEGIN IMMEDIATE`` transaction, so check-then-set is atomic
across processes: two schedulers racing for an expired lease are serialised by the
write lock and the second one sees the first one's row. Lease writes skip the fsync
(a renewal lost to a power cut only shortens the lease).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from ...limits import QueueLimits
from ..values import LeaseInfo, StoredSchedule
from ..workers import worker_entry
from .connection import Q, SqliteCore


class SqliteCoordination(SqliteCore):
    """Leases, schedules, workers and limits."""

    # --- leases ---------------------------------------------------------------------------
    @staticmethod
    def _live_holder(conn: sqlite3.Connection, name: str, now: int) -> str | None:
        row = conn.execute(Q["lease_holder"], (name, now)).fetchone()
        return None if row is None else str(row[0])

    async def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` if it is free, expired or already ours (see the protocol)."""

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            if self._live_holder(conn, name, now) not in (None, holder):
                return False
            conn.execute(Q["lease_put"], (name, holder, now + ttl_ms))
            return True

        return await self._write(tx, durable=False)

    async def renew_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Extend lease `name` only while `holder` holds it and it has not expired."""

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            return conn.execute(Q["lease_renew"], (now + ttl_ms, name, holder, now)).rowcount == 1

        return await self._write(tx, durable=False)

    async def release_lease(self, name: str, holder: str) -> bool:
        """Drop lease `name` if `holder` holds it."""

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock.now_ms()
            return conn.execute(Q["lease_release"], (name, holder, now)).rowcount == 1

        return await self._write(tx, durable=False)

    async def lease_info(self, name: str) -> LeaseInfo | None:
        """The live holder of lease `name` and its remaining milliseconds."""

        def read(conn: sqlite3.Connection) -> LeaseInfo | None:
            now = self.clock.now_ms()
            row = conn.execute(Q["lease_holder"], (name, now)).fetchone()
            return None if row is None else LeaseInfo(str(row[0]), int(row[1]) - now)

        return await self._call(read)

    # --- schedules ------------------------------------------------------------------------
    async def put_schedule(self, name: str, spec_json: str, source: str) -> None:
        """Create or update a schedule (an update keeps paused, since and last run)."""
        await self._write(
            lambda conn: conn.execute(
                Q["schedule_put"], (name, spec_json, source, self.clock.now_ms())
            )
        )

    async def schedules(self) -> list[StoredSchedule]:
        """Every stored schedule, by name."""
        rows = await self._call(lambda conn: conn.execute(Q["schedules"]).fetchall())
        return [
            StoredSchedule(name, spec, source, bool(paused), int(since), last, error)
            for name, spec, source, paused, since, last, error in rows
        ]

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; returns whether it existed."""
        return await self._write(
            lambda conn: conn.execute(Q["schedule_delete"], (name,)).rowcount == 1
        )

    async def set_schedule_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume; resuming a paused schedule moves its baseline to now."""
        return await self._write(
            lambda conn: (
                conn.execute(Q["schedule_pause"], (int(paused), self.clock.now_ms(), name)).rowcount
                == 1
            )
        )

    async def advance_schedule(self, name: str, run_ms: int, *, lease: str, holder: str) -> bool:
        """Set `last_run_ms` if `holder` holds the live `lease` and `run_ms` is later."""

        def tx(conn: sqlite3.Connection) -> bool:
            if self._live_holder(conn, lease, self.clock.now_ms()) != holder:
                return False
            return conn.execute(Q["schedule_advance"], (run_ms, name)).rowcount == 1

        # Not fsynced: losing it to a power cut makes the next leader enqueue the same
        # occurrence again, which the deterministic job id turns into a no-op.
        return await self._write(tx, durable=False)

    async def record_schedule_error(
        self, name: str, error_json: str, *, lease: str, holder: str
    ) -> bool:
        """Store a schedule's last error if `holder` holds the live `lease`."""

        def tx(conn: sqlite3.Connection) -> bool:
            if self._live_holder(conn, lease, self.clock.now_ms()) != holder:
                return False
            return conn.execute(Q["schedule_error"], (error_json, name)).rowcount == 1

        # Not fsynced: the next tick that fails again writes it again.
        return await self._write(tx, durable=False)

    # --- the worker registry --------------------------------------------------------------
    async def register_worker(self, worker_id: str, info_json: str, ttl_ms: int) -> None:
        """Record that a worker is alive for `ttl_ms`, stamped with the engine's clock."""

        def tx(conn: sqlite3.Connection) -> None:
            now = self.clock.now_ms()
            conn.execute(Q["register_worker_prune"], (now,))
            conn.execute(Q["register_worker"], (worker_id, info_json, now, now + ttl_ms))

        await self._write(tx, durable=False)

    async def unregister_worker(self, worker_id: str) -> None:
        """Remove a worker's record at shutdown."""
        await self._write(lambda conn: conn.execute(Q["unregister_worker"], (worker_id,)))

    async def workers(self) -> list[dict[str, Any]]:
        """Workers whose record has not expired: their info, `id`, `expires_ms` and
        `last_seen` (s, the engine's clock: it overrides one in the worker's info)."""
        rows = await self._call(
            lambda conn: conn.execute(Q["live_workers"], (self.clock.now_ms(),)).fetchall()
        )
        return [
            worker_entry(wid, info, last_seen_ms=last_seen_ms, expires_ms=expires_ms)
            for wid, info, last_seen_ms, expires_ms in rows
        ]

    # --- limits ---------------------------------------------------------------------------
    async def set_limits(self, queue: str, limits: QueueLimits | None) -> None:
        """Store `queue`'s limits for every process using this file (None: no limits)."""

        def tx(conn: sqlite3.Connection) -> None:
            if limits is None or limits.empty:
                conn.execute(Q["delete_limits"], (queue,))
            else:
                conn.execute(Q["put_limits"], {"queue": queue, **limits.fields()})

        await self._write(tx)
        self._jobs_wake.notify()  # other processes see the commit through data_version

    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty when it has none)."""

        def read(conn: sqlite3.Connection) -> QueueLimits:
            for row in conn.execute(Q["read_limits"]):
                if row[0] == queue:
                    return QueueLimits(*row[1:])
            return QueueLimits()

        return await self._call(read)

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (the trigger-kept counts claims check)."""
        rows = await self._call(lambda conn: conn.execute(Q["tenant_running"], (queue,)).fetchall())
        return {str(t): int(n) for t, n in rows}
