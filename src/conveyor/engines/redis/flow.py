"""The job flow on Redis: producers' enqueue, workers' exchange (outcomes and claims),
heartbeats, progress, and expired-lease recovery (the hot path).

Round trips are the cost (see bench/): a worker's `exchange`
acknowledges its finished jobs and claims new ones from a queue in one script call, and
a producer's `enqueue` stores a batch in one script call per queue and chunk of at most
`bulk.ENQUEUE_CHUNK` jobs (pipelined together, wave by wave).
What each outcome does to a job is decided by `conveyor.lifecycle` and applied in Lua.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ... import lifecycle
from ...job import EnqueueResult, JobState, NewJob, decode_lenient, queue_of
from ..base import Exchange, Outcome
from .bulk import ENQUEUE_CHUNK, bulk_waves
from .connection import driver_errors, job_fields
from .lane import Lane
from .pickup import RedisPickup

_STATES: dict[str, JobState] = {state.value: state for state in JobState}
# Where an `enqueue` call's ARGV (from 0) holds its layout, 11 or 2 (see enqueue.lua):
# after the 4-value header and the number of jobs.
_LAYOUT_AT = 5


def _state(name: str) -> JobState:
    """A state named in a script's reply (a dict lookup: `JobState(name)` costs ~1 us)."""
    return _STATES.get(name) or JobState(name)


class RedisFlow(RedisPickup):
    """Enqueue, exchange, heartbeat, progress, recovery (see `conveyor.engines.base`)."""

    @driver_errors
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store jobs: one script call per queue and chunk, pipelined per wave.

        A script blocks Redis while it runs (a 20,000-job call blocked every worker's
        claim and heartbeat for 391 ms), so each queue's jobs go in chunks of at most
        `ENQUEUE_CHUNK` (about 3 ms each). Wave k holds chunk k of every queue in one
        round trip; the next wave is sent only after it succeeded, so other clients'
        commands run between chunks. What that promises (the README says it too):

            every chunk is all or nothing; if a wave fails, the call raises and the
            jobs stored are, per queue, a prefix of its jobs in input order (whole
            chunks); a call of at most ENQUEUE_CHUNK jobs per queue is all or nothing.

        The client's own work overlaps Redis's: while wave k runs, wave k+1's arguments
        are built, and wave k's replies are decoded once wave k+1 is on its way.

        Args:
            jobs: validated jobs.

        Returns:
            One result per job, in input order (`created=False`: a dedupe key pointed at
            a live job, whose id and state are returned).
        """
        if not jobs:
            return []
        if len(jobs) == 1 and jobs[0].queue in self._known_queues:
            # The common single enqueue: one EVALSHA, no grouping into waves.
            queue = jobs[0].queue
            _, keys, header = self._q(queue, remember=True)
            job_id, created, state = await self._eval_queue(
                self._enqueue, queue, keys, header, (1, 11, *self._job_args(jobs[0]))
            )
            return [EnqueueResult(job_id, bool(created), _state(state))]
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.queue, []).append(i)
        waves = bulk_waves(groups, ENQUEUE_CHUNK)
        results: list[EnqueueResult | None] = [None] * len(jobs)
        if len(waves) == 1 or type(self._lane) is not Lane or self._ack is not None:
            # One wave, or a connection without `start` (Cluster, Sentinel, TLS) or with
            # replica acknowledgements: wave by wave.
            for wave in waves:
                calls = self._wave_calls(jobs, wave)
                replies = await self._run_many(calls, add_queues=self._new_queues(wave))
                self._known_queues_add(wave)
                self._decode_wave(jobs, wave, calls, replies, results)
            return [r for r in results if r is not None]
        # Several waves on a plain lane: Redis runs wave k while this builds wave k+1's
        # arguments; wave k+1 is written as soon as wave k succeeded, and wave k's
        # replies are decoded while Redis runs it.
        #   here:   args k+1 | wait k | send k+1 | decode k | args k+2 | wait k+1 | ...
        #   Redis:  runs wave k         |  runs wave k+1                 |
        # Wave k+1 is packed before the wait, too: what is left between wave k's reply
        # and wave k+1's write is the check of that reply.
        lane = self._lane
        calls = self._wave_calls(jobs, waves[0])
        names = self._new_queues(waves[0])
        sent = await lane.start(self.script_commands(calls, names))
        for k, wave in enumerate(waves):
            after = waves[k + 1] if k + 1 < len(waves) else None
            upcoming = self._wave_calls(jobs, after) if after is not None else []
            packed = Lane.pack(self.script_commands(upcoming, ()))
            done = calls
            replies = await self._checked(done, await lane.replies(sent), names, None)
            self._known_queues_add(wave)
            if after is not None:
                calls, names = upcoming, self._new_queues(after)
                sent = await lane.start([*self.script_commands((), names), *packed])
            self._decode_wave(jobs, wave, done, replies, results)
        return [r for r in results if r is not None]

    def _wave_calls(
        self, jobs: Sequence[NewJob], wave: Sequence[tuple[str, list[int]]]
    ) -> list[tuple[Any, list[str], list[Any]]]:
        """The script calls of one wave: one per queue chunk."""
        return [(self._enqueue, *self._enqueue_call(q, jobs, ix)) for q, ix in wave]

    def _new_queues(self, wave: Sequence[tuple[str, list[int]]]) -> list[str]:
        # The queue registry only grows, so each process SADDs a queue once; then a
        # single-queue enqueue is one EVALSHA, not a pipeline (half the client CPU).
        return [q for q, _ in wave if q not in self._known_queues]

    def _known_queues_add(self, wave: Sequence[tuple[str, list[int]]]) -> None:
        for q, _ in wave:
            if q not in self._known_queues:
                self._known_queues.put(q, True)

    @staticmethod
    def _decode_wave(
        jobs: Sequence[NewJob],
        wave: Sequence[tuple[str, list[int]]],
        calls: Sequence[tuple[Any, list[str], list[Any]]],
        replies: Sequence[Any],
        results: list[EnqueueResult | None],
    ) -> None:
        for (_, indexes), (_, _, args), reply in zip(wave, calls, replies, strict=True):
            if args[_LAYOUT_AT] == 2:
                # The state of the jobs created, then (index, state) of each that was
                # not (its id existed: a retried call whose reply was lost).
                if reply[0]:
                    state = _state(reply[0])
                    for i in indexes:
                        results[i] = EnqueueResult(jobs[i].id, True, state)
                for n in range(1, len(reply), 2):
                    i = indexes[int(reply[n])]
                    results[i] = EnqueueResult(jobs[i].id, False, _state(reply[n + 1]))
                continue
            for n, i in enumerate(indexes):
                job_id, created, state = reply[3 * n : 3 * n + 3]
                results[i] = EnqueueResult(job_id, bool(created), _state(state))

    def _enqueue_call(
        self, queue: str, jobs: Sequence[NewJob], indexes: Sequence[int]
    ) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one `enqueue` script call for `jobs[i] for i in indexes`:
        layout 2 when the jobs differ only in id and payload (a bulk enqueue of one task
        with the same options, no dedupe keys): their other 9 values once, then 2 values
        per job; else layout 11 (see `enqueue.lua`)."""
        _, keys, header = self._q(queue, remember=True)
        f = jobs[indexes[0]]
        if f.dedupe_key is None:
            task, attempts, priority, tenant = f.task, f.max_attempts, f.priority, f.tenant
            timeout, backoff, delay, run_at = f.timeout, f.backoff_json, f.delay_ms, f.run_at_ms
            shared = self._job_args(f)[1:]
            args: list[Any] = [*header, len(indexes), 2, shared[0], *shared[2:]]
            for i in indexes:
                j = jobs[i]
                # Field by field (a tuple per job to compare would cost more).
                if (
                    j.task != task
                    or j.max_attempts != attempts
                    or j.priority != priority
                    or j.tenant != tenant
                    or j.dedupe_key is not None
                    or j.timeout != timeout
                    or j.backoff_json != backoff
                    or j.delay_ms != delay
                    or j.run_at_ms != run_at
                ):
                    break
                args += (j.id, j.payload_json)
            else:
                return keys, args
        args = [*header, len(indexes), 11]
        for i in indexes:
            args += self._job_args(jobs[i])
        return keys, args

    @staticmethod
    def _job_args(j: NewJob) -> tuple[Any, ...]:
        """One job's 11 ARGV values of `enqueue.lua` (layout 11)."""
        return (
            j.id,
            j.task,
            j.payload_json,
            j.max_attempts,
            j.priority,
            j.tenant or "",
            j.dedupe_key or "",
            "" if j.timeout is None else int(j.timeout * 1000),
            j.backoff_json or "",
            j.delay_ms,
            "" if j.run_at_ms is None else j.run_at_ms,
        )

    @driver_errors
    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        """Apply `outcomes`, then claim up to `limit` jobs from `queues` in order.

        A queue's outcomes and its claim travel in the same script call; queues are
        visited in order until `limit` is filled (each claim depends on how many the
        previous one got). Outcomes of queues not claimed from go in one pipeline.

        Returns:
            Claimed jobs, ids whose lease was lost, and ms until the next due job.
        """
        by_queue: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_queue.setdefault(queue_of(outcome.job_id), []).append(outcome)
        result = Exchange()
        remaining = limit
        next_due: int | None = None
        if remaining > 0:
            claim_from = list(dict.fromkeys(queues))
            # Outcomes of queues this call will not claim from go first, together.
            others = [q for q in by_queue if q not in claim_from]
            if others:
                await self._apply_outcomes(
                    {q: by_queue.pop(q) for q in others}, worker_id, lease_ms, result
                )
            passed = await self._idle_look(worker_id, claim_from, by_queue)
            for queue in claim_from:
                if queue in passed:  # registered, nothing due (pickup.py: _idle_look)
                    due = passed[queue]
                    if due >= 0 and (next_due is None or due < next_due):
                        next_due = due
                    continue
                outs = by_queue.pop(queue, [])
                if remaining <= 0 and not outs:
                    continue
                # A wake-up that arrives from now on is for work this claim cannot see
                # (see wait_for_jobs), so forget the ones before it.
                if queue in self._woken:
                    self._woken[queue] = False
                lost, due, claimed, recovered, waiting = await self._run(
                    "exchange",
                    queue,
                    *self._exchange_args(outs, worker_id, lease_ms, max(remaining, 0)),
                    *self._pickup_args(worker_id, queue, max(remaining, 0)),
                    remember=True,
                )
                result.lost.extend(lost)
                result.recovered += recovered
                result.jobs += self._after_exchange(
                    worker_id, queue, max(remaining, 0), waiting, lease_ms
                )
                for flat in claimed:
                    result.jobs.append(decode_lenient(job_fields(flat)))
                remaining = limit - len(result.jobs)
                if due >= 0 and (next_due is None or due < next_due):
                    next_due = due
        if by_queue:
            await self._apply_outcomes(by_queue, worker_id, lease_ms, result)
        result.next_due_ms = next_due
        return result

    @staticmethod
    def _exchange_args(
        outcomes: Sequence[Outcome], worker_id: str, lease_ms: int, limit: int
    ) -> list[Any]:
        args: list[Any] = [worker_id, lease_ms, limit, len(outcomes)]
        for o in outcomes:
            if o.kind == "complete":
                body = o.result_json
            elif o.kind == "defer":
                body = o.reason
            elif o.kind == "release":
                body = None
            else:
                body = o.error_json
            args += (o.job_id, o.token, o.kind, body or "", o.delay_ms)
        return args

    async def _apply_outcomes(
        self, groups: dict[str, list[Outcome]], worker_id: str, lease_ms: int, result: Exchange
    ) -> None:
        calls = []
        for queue, outs in groups.items():
            _, keys, header = self._q(queue, remember=True)
            calls.append(
                (
                    self._exchange,
                    keys,
                    [*header, *self._exchange_args(outs, worker_id, lease_ms, 0), 0, 0],
                )
            )
        for lost, *_ in await self._run_many(calls):
            result.lost.extend(lost)

    @driver_errors
    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend leases `(job_id, token)` to now + lease_ms (one round trip).

        Returns:
            Ids whose lease was lost (job gone, not running, or token changed).
        """
        if not leases:
            return []
        groups: dict[str, list[str]] = {}
        for job_id, token in leases:
            groups.setdefault(queue_of(job_id), []).extend((job_id, token))
        calls = []
        for queue, pairs in groups.items():
            _, keys, header = self._q(queue, remember=True)
            calls.append((self._scripts["heartbeat"], keys, [*header, lease_ms, *pairs]))
        return [job_id for lost in await self._run_many(calls) for job_id in lost]

    @driver_errors
    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress of a running job; False when the lease is gone."""
        queue = queue_of(job_id)
        return bool(await self._run("set_progress", queue, job_id, token, progress_json))

    @driver_errors
    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""
        total = 0
        todo = list(dict.fromkeys(queues))
        while todo:
            calls = []
            for queue in todo:
                _, keys, header = self._q(queue, remember=True)
                calls.append((self._scripts["recover"], keys, [*header, lifecycle.RECOVER_BATCH]))
            replies = await self._run_many(calls)
            total += sum(int(recovered) for recovered, _ in replies)
            todo = [q for q, (_, more) in zip(todo, replies, strict=True) if more]
        return total
