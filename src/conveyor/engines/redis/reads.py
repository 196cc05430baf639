"""The read model on Redis: jobs, counts, listings, events, throughput, limits.

Reads go through redis-py (not the hot-path lane) and never change state; counts and
throughput are read-only scripts so every figure comes from one moment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import orjson

from ... import lifecycle
from ...job import Job, JobState, decode_job, queue_of
from ...limits import QueueLimits
from ..base import Event, JobPage, QueueCounts, Throughput
from .connection import RedisBase, driver_errors, hash_fields
from .fanout import Entries, read_streams

_BACKFILL_BATCH = 1000  # jobs per tenant_backfill call
_MAX_BLOCK_MS = 20_000  # XREAD BLOCK stays under the socket timeout (see read_events)


def _event(queue: str, entry_id: str, f: dict[str, str]) -> Event:
    attempt = f.get("attempt")
    data = f.get("data")
    return Event(
        id=entry_id,
        kind=f.get("kind", ""),
        job_id=f.get("job", ""),
        queue=queue,
        at=int(f.get("at") or 0) / 1000.0,
        task=f.get("task") or None,
        tenant=f.get("tenant") or None,
        attempt=int(attempt) if attempt else None,
        data=orjson.loads(data) if data else {},
    )


class RedisReads(RedisBase):
    """What the CLI, API and dashboard read (see `conveyor.engines.base`)."""

    @driver_errors
    async def get_job(self, job_id: str) -> Job:
        """One job with its errors.

        Raises:
            JobNotFound: no such job.
            MalformedJob: its stored fields cannot be decoded.
        """
        key = self._keys.queue(queue_of(job_id)).job(job_id)
        fields = cast(dict[str, Any], await self._client.hgetall(key))
        if not fields:
            raise lifecycle.not_found(job_id)
        return decode_job(hash_fields(fields, job_id))

    @driver_errors
    async def queue_names(self) -> list[str]:
        """Every queue that has ever held a job, sorted."""
        return sorted(cast(set[str], await self._client.smembers(self._keys.queues)))

    @driver_errors
    async def counts(self, queue: str) -> QueueCounts:
        """Depth per state (ZCARD), paused flag, oldest pending job, last-minute throughput.

        One read-only script: every figure is O(1) or O(log n), no scans.
        """
        reply = await self._run("counts", queue)
        sched, pend, run, done, failed, cancelled, paused, oldest, done_1m, failed_1m = reply[:10]
        return QueueCounts(
            queue=queue,
            scheduled=sched,
            pending=pend,
            running=run,
            completed=done,
            failed=failed,
            cancelled=cancelled,
            paused=bool(paused),
            oldest_pending_ms=None if oldest < 0 else int(oldest),
            completed_1m=done_1m,
            failed_1m=failed_1m,
            waiting=reply[10],
        )

    @driver_errors
    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs in one state: pending in claim order, scheduled by due time, others newest first.

        The cursor is an offset into the state's index; with `tenant`, into that
        tenant's own index of the state (keys.py: `ts:<state>:<tenant>`, kept by the
        scripts that move jobs), so a tenant's page is one range read whatever other
        tenants hold, and its offsets count its own jobs only.

        Raises:
            ValueError: `cursor` is not one this engine handed out (as on SQLite; the
                app turns it into `InvalidArgument`).
        """
        keys = self._keys.queue(queue)
        desc = state not in (JobState.PENDING, JobState.SCHEDULED)
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise ValueError(f"cursor {cursor!r} is not one this engine returned") from None
        if limit <= 0:
            return JobPage([], cursor)
        if state is JobState.PENDING:
            return await self._list_pending(queue, tenant, limit, start if cursor else None)
        if tenant is not None and queue not in self._tenant_indexed:
            await self._backfill_tenant_indexes(queue)
        zkey = (
            keys.by_state(state.value) if tenant is None else keys.tenant_state(state.value, tenant)
        )
        ids = cast(list[str], await self._client.zrange(zkey, start, start + limit, desc=desc))
        more = len(ids) > limit
        jobs = await self._load(queue, ids[:limit])
        return JobPage(jobs, str(start + limit) if more else None)

    async def _backfill_tenant_indexes(self, queue: str) -> None:
        """Index the tenant jobs a queue held before per-tenant state indexes existed
        (once per queue: the `tindexed` flag; then once per process: a set).

        Every script that moves a job keeps the indexes from then on, so a walk over
        each state's zset (bounded batches, `lua/tenant_backfill.lua`) is all an
        upgraded store needs. Processes of the older version must be gone by then:
        their moves would not keep the indexes.
        """
        keys = self._keys.queue(queue)
        if not await self._client.exists(keys.tindexed):
            if not await self._client.sismember(self._keys.queues, queue):
                # No such queue (a made-up name): nothing to index, and nothing is
                # remembered, here or in Redis.
                return
            for state in ("scheduled", "running", "completed", "failed", "cancelled"):
                low, skip = "-inf", 0
                while True:
                    n, last, at_last = await self._run(
                        "tenant_backfill", queue, state, low, skip, _BACKFILL_BATCH
                    )
                    if n < _BACKFILL_BATCH:
                        break
                    skip = skip + at_last if last == low else at_last
                    low = last
            await self._client.set(keys.tindexed, "1")
        if len(self._tenant_indexed) >= 10_000:
            self._tenant_indexed.clear()  # bounded: a forgotten queue costs one EXISTS
        self._tenant_indexed.add(queue)

    async def _list_pending(
        self, queue: str, tenant: str | None, limit: int, after: int | None
    ) -> JobPage:
        """Pending jobs in the queue's priority/FIFO order, after the score `after`.

        Jobs without a tenant and tenant jobs live in two zsets with the same scores
        (see keys.py): a page reads `limit + 1` from each and merges them. The cursor is
        the score of the page's last job (scores are unique: each comes from a counter).
        A tenant's jobs are its bucket alone.
        """
        keys = self._keys.queue(queue)
        zkeys = [keys.bucket(tenant)] if tenant is not None else [keys.pending, keys.tpending]
        low = "-inf" if after is None else f"({after}"
        async with self._client.pipeline(transaction=False) as pipe:
            for zkey in zkeys:
                pipe.zrangebyscore(zkey, low, "+inf", start=0, num=limit + 1, withscores=True)
            replies = await pipe.execute()
        entries = sorted(
            ((int(score), job_id) for reply in replies for job_id, score in reply),
        )[: limit + 1]
        more = len(entries) > limit
        entries = entries[:limit]
        jobs = await self._load(queue, [job_id for _, job_id in entries])
        return JobPage(jobs, str(entries[-1][0]) if more and entries else None)

    @driver_errors
    async def read_events(
        self, queues: Sequence[str], *, since: dict[str, str] | None, count: int, block_ms: int
    ) -> list[Event]:
        """Events after `since` (queue -> last seen stream id; absent = only new ones).

        One XREAD over the queues' streams, blocking up to `block_ms` (capped below the
        socket timeout; callers loop). Event ids are stream ids.
        """
        if not queues:
            return []
        since = since or {}
        by_key = {self._keys.queue(q).events: q for q in dict.fromkeys(queues)}
        streams = {key: since.get(q, "$") for key, q in by_key.items()}
        # The block must end before the socket timeout would call the connection dead.
        cap = min(_MAX_BLOCK_MS, int(self._timeout * 1000) - 500)
        block = max(1, min(block_ms, cap)) if block_ms > 0 else None
        reply: Entries | None
        if self._cluster is not None and len(streams) > 1:  # CROSSSLOT: see fanout.py
            reply = await read_streams(self._cluster, streams, count=count, block_ms=block)
        else:
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]] | None,
                await self._client.xread(streams, count=count, block=block),  # type: ignore[arg-type]
            )
        events = [
            _event(by_key[stream], entry_id, fields)
            for stream, entries in reply or []
            for entry_id, fields in entries
        ]
        if len(by_key) > 1:
            events.sort(key=lambda e: tuple(int(p) for p in e.id.split("-")))
        return events[:count]

    @driver_errors
    async def last_event_ids(self, queues: Sequence[str]) -> dict[str, str]:
        """The newest event id per queue ("0" when it has none), to resume reading from."""
        async with self._client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.xrevrange(self._keys.queue(q).events, count=1)
            replies = await pipe.execute()
        return {q: (r[0][0] if r else "0") for q, r in zip(queues, replies, strict=True)}

    @driver_errors
    async def throughput_history(self, queue: str, minutes: int) -> Throughput:
        """Completed/failed jobs per minute: ZCOUNTs over the finished-time zsets in one
        read-only script (`lua/throughput_history.lua`), on the Redis clock."""
        minutes = max(1, minutes)
        keys, _, _ = self._q(queue)
        reply = await self._global_script("throughput_history")(
            keys=[keys.completed, keys.failed], args=[minutes, self._now()]
        )
        counts = [int(n) for n in reply[1:]]
        return Throughput(queue, int(reply[0]), counts[:minutes], counts[minutes:])

    @driver_errors
    async def get_limits(self, queue: str) -> QueueLimits:
        """The stored limits of `queue` (empty when it has none)."""
        fields = cast(dict[str, str], await self._client.hgetall(self._keys.queue(queue).limits))
        return QueueLimits.from_fields(fields)

    @driver_errors
    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (the `trunning` hash claims check)."""
        raw = cast(dict[str, str], await self._client.hgetall(self._keys.queue(queue).trunning))
        return {t: int(n) for t, n in sorted(raw.items()) if int(n) > 0}
