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


# An event's id is its stream entry's id `<ms>-<seq>` with the event's place inside the
# entry folded into the second number: `<ms>-<seq * _PER_ENTRY + i>`, where the entry's
# last event has i = _LAST. A script that emits many events writes them as one entry
# (`batch`, see flush_events in lua/_lib.lua), and each event still needs an id that
# sorts in order and can be resumed after; ids keep the two-number shape every caller
# knows (the API checks it) and fit 63 bits. Resuming after an entry's last event (what
# a reader that took whole entries does) is a plain XREAD after that entry; only after an
# event inside an entry is the entry read again, and then it still has events to return.
_PER_ENTRY = 1 << 20  # more than any script emits in one call
_LAST = _PER_ENTRY - 1
_MAX_SEQ = (1 << 64) - 1  # the largest sequence number of a stream id


def _event_id(entry_id: str, i: int) -> str:
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq) * _PER_ENTRY + i}"


def _resume_from(event_id: str) -> tuple[str, tuple[str, int] | None]:
    """Where XREAD resumes after `event_id`: the id to pass (XREAD returns what follows
    it) and, for an event inside an entry (not its last), that entry and the event's
    place in it (the entry is read again and its events up to there are skipped).

    Raises:
        ValueError: not an id this engine handed out.
    """
    ms_text, dash, n_text = event_id.partition("-")
    if not dash:  # "0", "$": a position XREAD knows
        return event_id, None
    try:
        ms, n = int(ms_text), int(n_text)
    except ValueError:
        raise ValueError(
            f"invalid event id {event_id!r}: pass back an id this engine returned"
        ) from None
    seq, i = divmod(n, _PER_ENTRY)
    if i == _LAST:
        return f"{ms}-{seq}", None
    if seq > 0:
        before = f"{ms}-{seq - 1}"
    elif ms > 0:
        before = f"{ms - 1}-{_MAX_SEQ}"
    else:
        before = "0-0"
    return before, (f"{ms}-{seq}", i)


def _events(queue: str, entry_id: str, f: dict[str, str]) -> list[Event]:
    """The events of one stream entry: one, or a script's `batch` of them."""
    at = int(f.get("at") or 0) / 1000.0
    batch = f.get("batch")
    rows: list[tuple[str, str, str | None, str | None, str | None, Any]]
    if batch is None:
        data = f.get("data")
        rows = [
            (f.get("kind", ""), f.get("job", ""), f.get("task"), f.get("tenant"),
             f.get("attempt"), orjson.loads(data) if data else {})
        ]  # fmt: skip
    else:
        rows = [tuple(row) for row in orjson.loads(batch)]
    last = len(rows) - 1
    return [
        Event(
            id=_event_id(entry_id, _LAST if i == last else i),
            kind=kind,
            job_id=job,
            queue=queue,
            at=at,
            task=task or None,
            tenant=tenant or None,
            attempt=int(attempt) if attempt else None,
            data=data,
        )
        for i, (kind, job, task, tenant, attempt, data) in enumerate(rows)
    ]


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

        Jobs without a tenant (two structures: the fifo list and a zset) and tenant jobs
        (a zset) share one score order (see keys.py): a page reads `limit + 1` from each
        and merges them. The cursor is the score of the page's last job (scores are
        unique: each comes from a counter). A tenant's jobs are its bucket alone.
        """
        keys = self._keys.queue(queue)
        zkeys = [keys.bucket(tenant)] if tenant is not None else [keys.pending, keys.tpending]
        low = "-inf" if after is None else f"({after}"
        async with self._client.pipeline(transaction=False) as pipe:
            for zkey in zkeys:
                pipe.zrangebyscore(zkey, low, "+inf", start=0, num=limit + 1, withscores=True)
            replies = await pipe.execute()
        if tenant is None:
            flat = await self._run("list_fifo", queue, "" if after is None else after, limit + 1)
            replies.append(list(zip(flat[::2], flat[1::2], strict=True)))
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
        streams: dict[str, str] = {}
        seen: dict[str, tuple[str, int]] = {}  # stream -> (entry, last event seen in it)
        for key, q in by_key.items():
            streams[key], inside = _resume_from(since.get(q, "$"))
            if inside is not None:
                seen[key] = inside
        # The block must end before the socket timeout would call the connection dead.
        cap = min(_MAX_BLOCK_MS, int(self._timeout * 1000) - 500)
        block = max(1, min(block_ms, cap)) if block_ms > 0 else None
        # An entry read again (resuming inside it) takes a place of `count` (in entries).
        entries = count + 1 if seen else count
        reply: Entries | None
        if self._cluster is not None and len(streams) > 1:  # CROSSSLOT: see fanout.py
            reply = await read_streams(self._cluster, streams, count=entries, block_ms=block)
        else:
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]] | None,
                await self._client.xread(streams, count=entries, block=block),  # type: ignore[arg-type]
            )
        events = []
        for stream, stream_entries in reply or []:
            for entry_id, fields in stream_entries:
                batch = _events(by_key[stream], entry_id, fields)
                entry_seen = seen.get(stream)
                if entry_seen is not None and entry_seen[0] == entry_id:
                    batch = batch[entry_seen[1] + 1 :]
                events += batch
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
        return {
            q: (_events(q, r[0][0], r[0][1])[-1].id if r else "0")
            for q, r in zip(queues, replies, strict=True)
        }

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
