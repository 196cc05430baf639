"""The job flow on Postgres: enqueue, exchange (outcomes, promotion, recovery, claims),
heartbeats, progress and the wake-up notifier.

An exchange is one call of the schema's ``exchange`` function (first migration):
outcomes, promotion, lease recovery and claims in one statement, so one round trip
and one transaction. Python only prepares the outcomes (with the data of the events
they record) and decodes the claimed rows.

Concurrency (inside that function): claims take rows with ``FOR UPDATE SKIP
LOCKED``, so workers of the whole fleet claim different jobs at once without waiting
on each other. A queue with limits, or with tenant jobs pending, is claimed by
``claim_fair`` under a transaction-level advisory lock named after the queue: the
running counts, the rate log and the tenants' turns are read and spent by one claimer
at a time, and the lock is held until its COMMIT, so the next claimer sees what it
took. That is what makes `concurrency`, `tenant_concurrency` and the rates hold for
the fleet, not per process.

Enqueue is one call of the schema's ``enqueue(jsonb)`` function for one job (also what
`enqueue_in` runs on a caller's own connection), of ``enqueue_one`` (migration 0017: typed
parameters, which hands anything unusual to ``enqueue``) for the usual job (no tenant,
dedupe key or delay), and of ``enqueue_batch`` (migration 0015: one binary array per
column, one row back) for a batch: one round trip each.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count
from operator import attrgetter
from typing import Any, Final

import orjson

from ...job import EnqueueResult, JobState, NewJob, decode_lenient
from ...lifecycle import outcome_event_data
from ..values import Exchange, Outcome
from .connection import Conn
from .pickup import PgPickup
from .queries import JOB_COLUMNS


def outcomes_document(outcomes: Sequence[Outcome]) -> str:
    """The JSON array the schema's ``exchange`` function takes: each outcome with the
    data of the event it records (what `lifecycle.TRANSITIONS` says goes in it)."""
    docs = []
    for o in outcomes:
        data = outcome_event_data(o.kind, o.error_json, o.reason, o.delay_ms)
        docs.append(
            {
                "id": o.job_id,
                "token": o.token,
                "kind": o.kind,
                "result": o.result_json,
                "err": o.error_json,
                "delay_ms": o.delay_ms,
                "data": orjson.dumps(data).decode() if data else None,
            }
        )
    return orjson.dumps(docs).decode()


def jobs_document(jobs: Sequence[NewJob]) -> str:
    """The JSON array the schema's ``enqueue`` function takes."""
    return orjson.dumps(
        [
            {
                "id": new.id,
                "queue": new.queue,
                "task": new.task,
                "payload": new.payload_json,
                "max_attempts": new.max_attempts,
                "priority": new.priority,
                "tenant": new.tenant,
                "dedupe_key": new.dedupe_key,
                "timeout_ms": None if new.timeout is None else int(new.timeout * 1000),
                "backoff": new.backoff_json,
                "delay_ms": new.delay_ms,
                "run_at_ms": new.run_at_ms,
            }
            for new in jobs
        ]
    ).decode()


# The columns of `enqueue_batch` after the ids and payloads, in its order (timeout in
# seconds here, in milliseconds there).
_BATCH_COLUMNS: Final = attrgetter(
    "queue", "task", "max_attempts", "priority", "tenant", "dedupe_key", "timeout",
    "backoff_json", "delay_ms", "run_at_ms",
)  # fmt: skip
_TIMEOUT_COLUMN: Final = 6
# `enqueue_batch`'s letter per created job.
_MADE: Final = {"p": JobState.PENDING, "s": JobState.SCHEDULED}


def joined(values: list[str]) -> tuple[str, str]:
    """`values` as one text and the separator that splits it back (queries.sql
    `enqueue_batch`: string_to_array): one join here and one split there, where an array
    parameter costs psycopg a Python step per element. The separator is the ASCII record
    separator, which JSON text never holds raw (RFC 8259 escapes control characters) nor
    does an id made here; when a value holds it anyway, a character none of them holds."""
    sep = "\x1e"
    text = sep.join(values)
    if text.count(sep) != len(values) - 1:
        used = set(text)
        sep = next(chr(c) for c in count(0xE000) if chr(c) not in used)
        text = sep.join(values)
    return text, sep


def batch_params(jobs: Sequence[NewJob]) -> list[Any]:
    """The parameters of `enqueue_batch` but its clock: ids and payloads (`joined`, each
    with its separator), then one array per column of `_BATCH_COLUMNS`, which holds one
    value when every job has that value (none for NULL)."""
    n = len(jobs)
    params: list[Any] = [
        *joined([new.id for new in jobs]),
        *joined([new.payload_json for new in jobs]),
    ]
    # One C-level getter per job; a batch whose jobs agree on every column (the usual
    # one) needs no transpose.
    rows = list(map(_BATCH_COLUMNS, jobs))
    columns: list[list[Any]]
    if rows.count(rows[0]) == n:
        columns = [[] if value is None else [value] for value in rows[0]]
    else:
        columns = [
            ([] if values[0] is None else [values[0]])
            if values.count(values[0]) == n
            else list(values)
            for values in zip(*rows, strict=True)
        ]
    timeouts = columns[_TIMEOUT_COLUMN]
    columns[_TIMEOUT_COLUMN] = [None if t is None else int(t * 1000) for t in timeouts]
    params.extend(columns)
    return params


def batch_results(jobs: Sequence[NewJob], row: Sequence[Any]) -> list[EnqueueResult]:
    """`EnqueueResult`s, in input order, from the row of ``enqueue_batch``: every job
    made, a letter each in `made` ('p' pending, 's' scheduled); or (`made` NULL) the
    answer of ``enqueue`` per job, as three arrays (id, created, state)."""
    made, held_ids, held_created, held_states = row
    if made is not None:
        return [EnqueueResult(new.id, True, _MADE[c]) for new, c in zip(jobs, made, strict=True)]
    return enqueue_results(list(zip(held_ids, held_created, held_states, strict=True)))


def enqueue_results(rows: Sequence[Sequence[Any]]) -> list[EnqueueResult]:
    """`EnqueueResult`s from the rows of the ``enqueue`` function."""
    return [EnqueueResult(str(r[0]), bool(r[1]), JobState(str(r[2]))) for r in rows]


class PgFlow(PgPickup):
    """Producers and workers: the hot path."""

    # --- producers ------------------------------------------------------------------------
    def enqueue_statement(self, jobs: Sequence[NewJob]) -> tuple[str, tuple[Any, ...]]:
        """The one statement (and its parameters) that stores `jobs` on a pooled
        connection (a caller's own runs `enqueue_in`, engine.py). Its rows go through
        `enqueue_results`."""
        if len(jobs) == 1:
            new = jobs[0]
            if (
                new.tenant is None
                and new.dedupe_key is None
                and not new.delay_ms
                and new.run_at_ms is None
            ):
                # The usual job: typed parameters, no document (migration 0017).
                timeout_ms = None if new.timeout is None else int(new.timeout * 1000)
                return self.q["enqueue_one"], (
                    new.id, new.queue, new.task, new.payload_json, new.max_attempts,
                    new.priority, timeout_ms, new.backoff_json, self._fixed,
                )  # fmt: skip
        return self.q["enqueue"], (jobs_document(jobs), self._fixed)

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` in one transaction and one round trip (all or nothing); results
        in input order. A job whose dedupe key a live job holds (or whose id exists)
        answers with that job (`created=False`) and writes nothing."""
        if not jobs:
            return []
        if len(jobs) > 1:
            return await self._enqueue_batch(jobs)
        sql, params = self.enqueue_statement(jobs)
        # One job (a producer's single enqueue): on the held line when it is free.
        held = await self._held_rows(sql, params)
        if held is not None:
            results = [EnqueueResult(str(r[0]), r[1] == "t", JobState(str(r[2]))) for r in held]
        else:

            async def tx(conn: Conn) -> list[EnqueueResult]:
                cur = conn.hot_cursor()
                await cur.execute(sql, params)
                return enqueue_results(await cur.fetchall())

            results = await self._run(tx, single=True)
        return await self._enqueued(jobs, results)

    async def _enqueued(
        self, jobs: Sequence[NewJob], results: list[EnqueueResult]
    ) -> list[EnqueueResult]:
        """What follows every stored enqueue, single or batch: the flush a hand-off
        needs, the wake-ups and the event count; returns `results`."""
        if any(r.created and r.state is JobState.RUNNING for r in results):
            # Handed to an idle worker: that commit did not wait for its WAL flush, so the
            # worker got its NOTIFY at once (migration 0014). Flush before returning.
            # (Batches are never handed today; the check costs a scan of the results.)
            await self._flush_wal()
        self._notify(jobs=True, events=True)
        self._count_events(sum(r.created for r in results), {new.queue for new in jobs})
        return results

    async def _enqueue_batch(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """`enqueue` of more than one job: one call of ``enqueue_batch``."""
        params = (*batch_params(jobs), self._fixed)

        async def tx(conn: Conn) -> list[EnqueueResult]:
            cur = conn.hot_cursor()
            await cur.execute(self.q["enqueue_batch"], params)
            row = await cur.fetchone()
            if row is None:
                raise AssertionError("enqueue_batch returns one row")
            return batch_results(jobs, row)

        return await self._enqueued(jobs, await self._run(tx, single=True))

    async def _flush_wal(self) -> None:
        """Make every commit of this session durable (queries.sql `flush_wal`): on the held
        line when it is free, else through the pool (a flush from any session covers the
        commits before it, the WAL being written in order).

        Raises:
            EngineUnavailable: the server cannot be reached. The enqueue is then not
                acknowledged, as when a COMMIT's reply is lost: its job may or may not be
                stored, and its worker may have started it (at-least-once).
        """
        sql = self.q["flush_wal"]
        if await self._held_rows(sql, ()) is not None:
            return

        async def flush(conn: Conn) -> None:
            await conn.hot_cursor().execute(sql)

        await self._run(flush, single=True)

    # --- workers ----------------------------------------------------------------------------
    async def exchange(
        self,
        outcomes: Sequence[Outcome],
        *,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> Exchange:
        """Apply `outcomes`, then claim up to `limit` jobs: one call of the schema's
        ``exchange`` function, so one round trip and one transaction.

        See `conveyor.engines.base.JobFlow` and `conveyor.lifecycle` for the contract.
        """
        # Recorded before the call (and listening from then on): a notification after
        # this point makes the next wait_for_jobs return at once instead of missing it.
        if limit > 0:
            await self._listen_from_now()
            self._exchange_generation = self._jobs_wake.generation
        args: tuple[Any, ...] = (
            outcomes_document(outcomes),
            list(queues),
            limit,
            worker_id,
            lease_ms,
            self._fixed,
        )
        # Without outcomes nothing acknowledged rides on this commit: it need not wait for
        # the WAL flush, the pickup's second one (queries.sql `exchange_claim`). A worker
        # that takes handed jobs registers when it claims nothing (pickup.py).
        waiting_args = self._exchange_waiting_args(worker_id, limit, args)
        flush = False
        if waiting_args is None:
            sql = self.q["exchange" if outcomes else "exchange_claim"]
        else:
            # Committed before its flush, then flushed when outcomes ride on it (queries.sql
            # `exchange_waiting`: a hand-off to this worker must not wait behind it).
            sql, args, flush = self.q["exchange_waiting"], waiting_args, bool(outcomes)

        async def call(conn: Conn) -> tuple[dict[str, Any], int | None]:
            cur = conn.hot_cursor()
            await cur.execute(sql, args)
            row = await cur.fetchone()
            assert row is not None
            out: dict[str, Any] = orjson.loads(row[0])
            if flush:
                await cur.execute(self.q["flush_wal"])
            return out, (None if len(row) < 2 else int(row[1]))

        result, waiting = await self._run(call, single=True)
        self._after_exchange_waiting(worker_id, waiting, outcomes, limit, len(result["jobs"]))
        done = set(result["done"])
        exchange = Exchange(
            [decode_lenient(dict(zip(JOB_COLUMNS, row, strict=True))) for row in result["jobs"]],
            [o.job_id for o in outcomes if o.job_id not in done],
            next_due_ms=result["next_due"],
            recovered=int(result["recovered"]),
        )
        self._notify(jobs=bool(result["woke"]), events=bool(result["events"]))
        self._count_events(int(result["events"]), queues)
        self._trim_soon()
        return exchange

    # --- leases of running jobs ---------------------------------------------------------
    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend the leases `(job_id, token)` to now + lease_ms; return ids that were lost."""
        if not leases:
            return []

        async def tx(conn: Conn) -> list[str]:
            cur = await conn.execute(
                self.q["extend_leases"],
                (self._fixed, lease_ms, [j for j, _ in leases], [t for _, t in leases]),
            )
            kept = {str(r[0]) for r in await cur.fetchall()}
            return [job_id for job_id, _ in leases if job_id not in kept]

        return await self._run(tx, single=True)

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress for a running job (one statement: the job, its event and the
        NOTIFY); False when the lease is gone."""
        params = {
            "progress": progress_json,
            "id": job_id,
            "token": token,
            "now": self._fixed,
            "data": '{"progress":' + progress_json + "}",
            "channel": self.channel,
        }

        async def call(conn: Conn) -> str | None:
            cur = await conn.execute(self.q["set_progress"], params)
            row = await cur.fetchone()
            return None if row is None else str(row[0])

        queue = await self._run(call, single=True)
        if queue is not None:
            self._notify(events=True)
            self._count_events(1, [queue])
        return queue is not None

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""

        async def call(conn: Conn) -> int:
            cur = await conn.execute(self.q["recover"], (list(queues), self._fixed))
            row = await cur.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        recovered = await self._run(call, single=True)
        self._notify(jobs=bool(recovered), events=bool(recovered))
        self._count_events(recovered, queues)
        return recovered

    # --- the notifier ---------------------------------------------------------------------
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of `queues` may have claimable work, or after `timeout` s.

        Woken by the NOTIFY of any process's commit that made work claimable (an
        enqueue, a release, a resume, ...); spurious wake-ups are allowed. While the
        LISTEN connection is down it polls instead (returns every 100 ms).
        """
        if self._pool is None:
            await self.connect()
        generation = self._exchange_generation
        if generation is None:
            generation = self._jobs_wake.generation
        await self._wait(self._jobs_wake, generation, timeout)
        # The wake-up is spent: a second wait without an exchange in between blocks
        # until the next notification instead of returning at once again.
        self._exchange_generation = self._jobs_wake.generation
