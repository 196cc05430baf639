"""The operator and read side of the app, shared by the CLI, the HTTP API, the
dashboard, `conveyor status` and the live-events hub: what they read (jobs, counts,
throughput, limits, workers, events, engine health) and what they change (pause,
retry, cancel, promote, clean, purge, limits).

Arguments are validated here, once, with `conveyor.lifecycle`'s checks and messages;
the engine applies the change inside its atomic step and checks only the state
preconditions that need that atomicity (with lifecycle's sets and messages).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from .. import lifecycle
from ..durability import check_engine, settings_document
from ..engines import Event, JobPage, QueueCounts
from ..engines.base import Throughput
from ..errors import EngineUnavailable, InvalidArgument, InvalidJob, InvalidState
from ..job import Job, JobState
from ..limits import QueueLimits, merge_limits
from ..partitions import (
    complete,
    group,
    join_limits,
    layout,
    logical,
    merge_counts,
    parse,
    split_limits,
)
from .checks import check_cursor, check_queue
from .core import AppCore

READY_PING_TIMEOUT = 2.0  # seconds a readiness probe waits for the engine
MAX_THROUGHPUT_MINUTES = 24 * 60


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(value)
    except ValueError:
        names = ", ".join(s.value for s in JobState)
        raise InvalidJob(f"state {value!r} is unknown: use one of {names}") from None


class Operations(AppCore):
    """Read the queues and act on them as an operator would."""

    # --- engine health -----------------------------------------------------------------
    @property
    def durable(self) -> bool:
        """Whether the engine survives a crash of the process that holds it (builds the
        engine, does not connect it).

        Raises:
            ConfigError: the engine URL is not one Conveyor supports.
        """
        return self.engine.durable

    async def ping(self, timeout: float = READY_PING_TIMEOUT) -> float:
        """Connect if needed, then measure one round trip to the engine.

        Args:
            timeout: seconds to wait for the connection and for the answer.

        Returns:
            The round-trip time in seconds.

        Raises:
            EngineUnavailable: the engine cannot be reached, or did not answer in time.
        """
        try:
            return await asyncio.wait_for(self._ping(), timeout)
        except TimeoutError:
            raise EngineUnavailable(
                f"the engine did not answer within {timeout:g}s: check that it runs and "
                "that CONVEYOR_URL points at it"
            ) from None

    async def _ping(self) -> float:
        return await (await self.connect()).ping()

    async def check_server(self, *, role: str, require_noeviction: bool = False) -> None:
        """Connect, then log what the engine server's settings put at risk (an evicting
        Redis `maxmemory-policy`: ERROR; AOF off: WARNING), see `conveyor.durability`.

        Args:
            role: who checks ("worker", "API", "scheduler"), for the log line.
            require_noeviction: refuse an evicting policy instead of logging it.

        Raises:
            ConfigError: `require_noeviction` and Redis may evict keys.
            EngineUnavailable: the engine cannot be reached.
        """
        check_engine(await self.connect(), role=role, require_noeviction=require_noeviction)

    def engine_server(self) -> dict[str, Any] | None:
        """The engine server's durability settings as last read at connect (Redis:
        `maxmemory_policy`, `appendonly`, `appendfsync`, `evicting`, `problems`; None for
        engines without a server). See `conveyor.durability`."""
        return settings_document(self.engine)

    async def readiness(
        self, *, stopping: bool = False, failing: Mapping[str, str] | None = None
    ) -> tuple[bool, str]:
        """Whether a process using this app should receive work: the engine answers,
        it is durable, no background loop is failing, and the process is not shutting
        down.

        Args:
            stopping: the process is shutting down.
            failing: background loops whose last turn failed, with the error (a worker's
                `loops.failing()`); any makes the process not ready.

        Returns:
            (ready, reason): reason is "ok" or says which rule failed.
        """
        if stopping:
            return False, "shutting down"
        if failing:
            name, error = next(iter(failing.items()))
            return False, f"{name} loop failing, retrying with backoff: {error}"
        try:
            await self.ping()
        except EngineUnavailable as exc:
            return False, f"engine unavailable: {exc or 'ping timed out'}"
        # Only memory:// keeps nothing past its process. Redis with AOF off is not durable
        # either, but it serves: start-up logs a warning and status shows why.
        if not self.durable and self.engine.url.startswith("memory:"):
            return False, f"engine {self.engine.url} is not durable (memory:// is for tests only)"
        return True, "ok"

    # --- read model ----------------------------------------------------------------------
    async def get_job(self, job_id: str) -> Job:
        """The job with every attempt's error.

        Raises:
            JobNotFound: no job has that id.
        """
        return self._own(await (await self.connect()).get_job(job_id))

    def get_job_sync(self, job_id: str) -> Job:
        """`get_job` for synchronous code."""
        return self._bridge().run(lambda app: app.get_job(job_id))

    async def queue_names(self) -> list[str]:
        """Every queue that has jobs, limits or a pause flag, sorted (a partitioned
        queue once, by its name: see `conveyor.partitions`)."""
        return sorted(group(await (await self.connect()).queue_names()))

    async def partitions_of(self, queue: str) -> list[str]:
        """The physical queues `queue` is stored in: itself, or its partitions in every
        layout that has left a trace in the engine or that this app declares."""
        names = await (await self.connect()).queue_names()
        found = [name for name in names if logical(name) == queue]
        return complete(queue, found, self.partitions.counts.get(queue)) or [queue]

    async def counts(self, queue: str) -> QueueCounts:
        """How many jobs `queue` has in each state (summed over its partitions)."""
        engine = await self.connect()
        names = await self.partitions_of(queue)
        if names == [queue]:
            return await engine.counts(queue)
        parts = await asyncio.gather(*(engine.counts(name) for name in names))
        return merge_counts(queue, parts)

    async def list_jobs(
        self,
        queue: str,
        state: JobState,
        *,
        tenant: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        sealed: bool = True,
    ) -> JobPage:
        """One page of `queue`'s jobs in `state` (pass the page's cursor for the next).

        Args:
            queue: the queue.
            state: the state listed.
            tenant: only this tenant's jobs (None: every job).
            limit: jobs per page at most.
            cursor: the previous page's cursor, None for the first page.
            sealed: cursors are opaque tokens bound to (queue, state, tenant) (see
                `cursors.py`): what the API hands to callers. False passes the
                engine's own positions through, for callers that hold the engine URL
                anyway and page across processes (the CLI).

        Raises:
            InvalidArgument: `cursor` is not one handed out for this queue, state and
                tenant.
        """
        engine = await self.connect()
        position = cursor
        if cursor is not None and sealed:
            position = self.cursors.open(cursor, queue=queue, state=state.value, tenant=tenant)
        names = await self.partitions_of(queue)
        try:
            if names == [queue]:
                page = await engine.list_jobs(
                    queue, state, tenant=tenant, limit=limit, cursor=check_cursor(position)
                )
            else:
                page = await self._list_partitions(names, state, tenant, limit, position)
        except (ValueError, InvalidState) as exc:
            # Engines refuse a cursor they cannot decode with one of these; the caller's
            # argument is what is wrong, whatever the engine called it.
            if cursor is None:
                raise
            raise InvalidArgument(
                f"cursor {cursor[:40]!r} is not one this engine returned: pass back the "
                "cursor of the previous page, or none for the first page"
            ) from exc
        for job in page.jobs:
            job.queue = queue
        if not sealed or page.cursor is None:
            return page
        token = self.cursors.seal(page.cursor, queue=queue, state=state.value, tenant=tenant)
        return JobPage(page.jobs, token)

    async def _list_partitions(
        self,
        names: list[str],
        state: JobState,
        tenant: str | None,
        limit: int,
        position: str | None,
    ) -> JobPage:
        """One page over a partitioned queue: its partitions one after another, each
        paged by its engine. The cursor is `<partition index>/<engine cursor>`, so a
        page may end in one partition and the next start in the one after it."""
        engine = await self.connect()
        index, inner = 0, None
        if position is not None:
            head, sep, rest = position.partition("/")
            if not sep or not head.isdigit() or int(head) >= len(names):
                raise ValueError(f"cursor {position[:40]!r} is not a partitioned queue's")
            index, inner = int(head), rest or None
        jobs: list[Job] = []
        while index < len(names):
            page = await engine.list_jobs(
                names[index],
                state,
                tenant=tenant,
                limit=limit - len(jobs),
                cursor=check_cursor(inner),
            )
            jobs.extend(page.jobs)
            if page.cursor is not None:
                if len(jobs) >= limit:
                    return JobPage(jobs, f"{index}/{page.cursor}")
                inner = page.cursor
                continue
            index, inner = index + 1, None
            if len(jobs) >= limit:
                return JobPage(jobs, f"{index}/" if index < len(names) else None)
        return JobPage(jobs, None)

    async def tenant_running(self, queue: str) -> dict[str, int]:
        """Running jobs per tenant of `queue` (what `tenant_concurrency` counts)."""
        engine = await self.connect()
        out: dict[str, int] = {}
        for name in await self.partitions_of(queue):
            for tenant, running in (await engine.tenant_running(name)).items():
                out[tenant] = out.get(tenant, 0) + running
        return out

    async def throughput(self, queues: Sequence[str] | None, minutes: int) -> list[Throughput]:
        """Completed and failed jobs per minute of each queue over the last `minutes`
        minutes, oldest first (the dashboard's sparklines).

        Args:
            queues: the queues (None: every queue).
            minutes: 1 to 1440.

        Raises:
            InvalidJob: a queue name or `minutes` is invalid.
        """
        if isinstance(minutes, bool) or not 1 <= minutes <= MAX_THROUGHPUT_MINUTES:
            raise InvalidJob(f"minutes={minutes!r} is invalid: use 1 to {MAX_THROUGHPUT_MINUTES}")
        names = list(queues) if queues else await self.queue_names()
        for name in names:
            check_queue(name, error=InvalidJob)
        return list(await asyncio.gather(*(self._throughput(n, minutes) for n in names)))

    async def _throughput(self, queue: str, minutes: int) -> Throughput:
        engine = await self.connect()
        names = await self.partitions_of(queue)
        parts = await asyncio.gather(*(engine.throughput_history(n, minutes) for n in names))
        if len(parts) == 1:
            return Throughput(queue, parts[0].end_ms, parts[0].completed, parts[0].failed)
        return Throughput(
            queue,
            parts[0].end_ms,
            [sum(column) for column in zip(*(p.completed for p in parts), strict=True)],
            [sum(column) for column in zip(*(p.failed for p in parts), strict=True)],
        )

    async def workers(self) -> list[dict[str, Any]]:
        """Workers alive now, with their queues, in-flight counts and last heartbeat
        (`last_seen` on the engine's clock)."""
        return await (await self.connect()).workers()

    # --- events --------------------------------------------------------------------------
    async def event_positions(self, queues: Sequence[str]) -> dict[str, str]:
        """The newest event id of each queue ("0" when none): pass it back to
        `read_events` to read from now on."""
        return await (await self.connect()).last_event_ids(queues)

    async def read_events(
        self,
        queues: Sequence[str],
        *,
        since: dict[str, str] | None,
        count: int = 500,
        block_ms: int = 1000,
    ) -> list[Event]:
        """Events of `queues` after `since` (queue -> last id seen), waiting up to
        `block_ms` for the first one; at most `count`."""
        return await (await self.connect()).read_events(
            queues, since=since, count=count, block_ms=block_ms
        )

    async def events(
        self, queues: Sequence[str], *, since: dict[str, str] | None = None, block_ms: int = 1000
    ) -> AsyncIterator[Event]:
        """Yield state-change events of `queues` as they happen, across processes.

        Args:
            since: queue -> last event id seen; absent queues start from now. A
                partitioned queue's events name their partition (`mail~3of8`), and so
                do its positions.
        """
        names = [name for queue in queues for name in await self.partitions_of(queue)]
        # Pin "now" for queues without a position, so nothing between reads is skipped.
        cursor = {**(await self.event_positions(names)), **(since or {})}
        while True:
            batch = await self.read_events(names, since=cursor, count=500, block_ms=block_ms)
            for event in batch:
                cursor[event.queue] = event.id
                yield event

    # --- limits --------------------------------------------------------------------------
    async def set_limits(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Store `queue`'s limits in the engine now, replacing the ones it had (no
        arguments: no limits). Every worker obeys them from its next claim.

        Raises:
            ConfigError: an invalid value.
            EngineUnavailable: the engine cannot be reached.
        """
        return await self.change_limits(
            queue,
            clear=True,
            concurrency=concurrency,
            tenant_concurrency=tenant_concurrency,
            rate=rate,
            tenant_rate=tenant_rate,
        )

    async def change_limits(
        self,
        queue: str,
        *,
        clear: bool = False,
        concurrency: int | None = None,
        tenant_concurrency: int | None = None,
        rate: str | None = None,
        tenant_rate: str | None = None,
    ) -> QueueLimits:
        """Change only the limits given (`conveyor limits`): the stored ones (or none,
        with `clear`) merged with these by `merge_limits`, then stored.

        Returns:
            The limits now stored.

        Raises:
            ConfigError: an invalid value; the message names the option and the fix.
            EngineUnavailable: the engine cannot be reached.
        """
        check_queue(queue)
        given = QueueLimits.build(
            concurrency=concurrency,
            tenant_concurrency=tenant_concurrency,
            rate=rate,
            tenant_rate=tenant_rate,
        )
        limits = merge_limits(None if clear else await self.get_limits(queue), given)
        await self.store_limits(queue, limits)
        return limits

    async def store_limits(self, queue: str, limits: QueueLimits) -> None:
        """Store `queue`'s limits as they are; a partitioned queue's `concurrency` and
        `rate` are split across its partitions (`conveyor.partitions.split_limits`).

        Raises:
            ConfigError: a limit is below the partition count.
            EngineUnavailable: the engine cannot be reached.
        """
        engine = await self.connect()
        layouts = _layouts(queue, await self.partitions_of(queue))
        shares = {count: split_limits(limits, count) for count in layouts}  # check all first
        for count, names in layouts.items():
            for name, share in zip(names, shares[count], strict=True):
                await engine.set_limits(name, share)

    async def get_limits(self, queue: str) -> QueueLimits:
        """The limits the engine enforces for `queue` now (a partitioned queue's:
        the sum of its partitions' shares, in its largest layout).

        Raises:
            InvalidJob: the queue name is invalid.
        """
        engine = await self.connect()
        layouts = _layouts(check_queue(queue, error=InvalidJob), await self.partitions_of(queue))
        names = layouts[max(layouts)]
        return join_limits(await asyncio.gather(*(engine.get_limits(n) for n in names)))

    async def limits_document(self, queue: str) -> dict[str, Any]:
        """`queue`'s limits and what they count now (`conveyor limits QUEUE --json`).

        Returns:
            `{"queue", "limits": {...}, "running", "pending", "tenant_running": {...}}`.
        """
        limits = await self.get_limits(queue)
        counts = await self.counts(queue)
        return {
            "queue": queue,
            "limits": limits.to_dict(),
            "running": counts.running,
            "pending": counts.pending,
            "tenant_running": await self.tenant_running(queue),
        }

    # --- operator actions ----------------------------------------------------------------
    async def pause(self, queue: str) -> None:
        """Stop workers claiming from `queue` (every partition); producers keep enqueueing."""
        engine = await self.connect()
        for name in await self.partitions_of(check_queue(queue, error=InvalidJob)):
            await engine.pause(name)

    async def resume(self, queue: str) -> None:
        """Let workers claim from `queue` (every partition) again."""
        engine = await self.connect()
        for name in await self.partitions_of(check_queue(queue, error=InvalidJob)):
            await engine.resume(name)

    async def retry_job(self, job_id: str) -> Job:
        """Send a failed or cancelled job back to pending with a fresh attempt budget.

        Raises:
            JobNotFound: no such job.
            InvalidState: it is not failed or cancelled, or its dedupe key is now held by
                another live job (nothing changes).
        """
        return self._own(await (await self.connect()).retry_job(job_id))

    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a scheduled, pending or running job (a running one's lease is revoked).

        Raises:
            JobNotFound, InvalidState: no such job, or it is already finished.
        """
        return self._own(await (await self.connect()).cancel_job(job_id))

    async def promote_job(self, job_id: str) -> Job:
        """Run a scheduled (delayed or retry-waiting) job now.

        Raises:
            JobNotFound, InvalidState: no such job, or it is not scheduled.
        """
        return self._own(await (await self.connect()).promote_job(job_id))

    async def retry_all(self, queue: str, state: JobState | str = JobState.FAILED) -> int:
        """Retry every failed (or cancelled) job of `queue`; jobs whose dedupe key is
        held by another live job stay where they are and are not counted.

        Returns:
            How many jobs went back to pending.

        Raises:
            InvalidJob: the queue name or state is unknown.
            InvalidState: `state` is not failed or cancelled.
        """
        checked = lifecycle.check_retry_all(_state(state))
        engine = await self.connect()
        names = await self.partitions_of(check_queue(queue, error=InvalidJob))
        return sum([await engine.retry_all(name, checked) for name in names])

    async def clean(
        self, queue: str, state: JobState | str, older_than: float, limit: int = 10_000
    ) -> int:
        """Delete finished jobs in `state` that finished over `older_than` seconds ago.

        Returns:
            How many were deleted (at most `limit`).

        Raises:
            InvalidJob: the queue or state is unknown, or older_than < 0 or limit < 1.
            InvalidState: `state` is live (scheduled, pending, running).
        """
        checked = lifecycle.check_clean(_state(state))
        if older_than < 0 or limit < 1:
            raise InvalidJob("clean needs older_than >= 0 seconds and limit >= 1")
        engine = await self.connect()
        removed = 0
        for name in await self.partitions_of(check_queue(queue, error=InvalidJob)):
            if removed >= limit:
                break
            removed += await engine.clean(name, checked, int(older_than * 1000), limit - removed)
        return removed

    async def purge(self, queue: str) -> int:
        """Delete every job of `queue`, in every state. Irreversible.

        Returns:
            How many jobs were deleted.
        """
        engine = await self.connect()
        names = await self.partitions_of(check_queue(queue, error=InvalidJob))
        return sum([await engine.purge(name) for name in names])


def _layouts(queue: str, names: Sequence[str]) -> dict[int, list[str]]:
    """`names` (a queue's physical queues) by partition count: 1 for the queue itself."""
    counts = {1 if (found := parse(name)) is None else found[2] for name in names}
    return {count: layout(queue, count) for count in sorted(counts)}
