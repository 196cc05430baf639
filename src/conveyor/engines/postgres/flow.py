"""The job flow on Postgres: enqueue, exchange (outcomes, promotion, recovery, claims),
heartbeats, progress and the wake-up notifier.

Concurrency: claims take rows with ``FOR UPDATE SKIP LOCKED``, so workers of the
whole fleet claim different jobs at once without waiting on each other. A queue with
limits, or with tenant jobs pending, is claimed under a transaction-level advisory
lock named after the queue: the running counts, the rate log and the tenants' turns
are read and spent by one claimer at a time, and the lock is held until its COMMIT, so
the next claimer sees what it took. That is what makes `concurrency`,
`tenant_concurrency` and the rates hold for the fleet, not per process.

Enqueue is one call of the schema's ``enqueue(jsonb)`` function (one round trip for
a batch), which is also what `enqueue_in` runs on a caller's own connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ...job import EnqueueResult, Job, JobState, NewJob, decode_lenient
from ...lifecycle import (
    LEASE_EXPIRED_EVENT,
    PROMOTE_BATCH,
    RECOVER_BATCH,
    ROTATION_PAGE,
    TRANSITIONS,
    TURN_BUDGET,
    TransitionKind,
    lease_expired_error,
)
from ..base import QueueLimits
from ..values import Exchange, Outcome
from .connection import Conn, PgCore, event_row

_LEASE_FAILED_DATA = orjson.dumps(LEASE_EXPIRED_EVENT).decode()


def _claim_order(row: Sequence[Any]) -> tuple[int, int]:
    """Claim order of a job row: priority (high first), then FIFO position."""
    return -int(row[7]), int(row[22])


def _message(error_json: str | None) -> str:
    """The message of an AttemptError JSON (for event data); "" when unreadable."""
    if not error_json:
        return ""
    try:
        return str(orjson.loads(error_json).get("message", ""))
    except (orjson.JSONDecodeError, AttributeError):
        return ""


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


def enqueue_results(rows: Sequence[Sequence[Any]]) -> list[EnqueueResult]:
    """`EnqueueResult`s from the rows of the ``enqueue`` function."""
    return [EnqueueResult(str(r[0]), bool(r[1]), JobState(str(r[2]))) for r in rows]


class PgFlow(PgCore):
    """Producers and workers: the hot path."""

    # --- producers ------------------------------------------------------------------------
    def enqueue_statement(self, jobs: Sequence[NewJob]) -> tuple[str, tuple[Any, ...]]:
        """The one statement (and its parameters) that stores `jobs`, for running on a
        caller's own connection inside the caller's transaction (transactional enqueue).
        Its rows go through `enqueue_results`."""
        now = self.fixed_clock.now_ms() if self.fixed_clock is not None else None
        return self.q["enqueue"], (jobs_document(jobs), now)

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` in one transaction and one round trip (all or nothing); results
        in input order. A job whose dedupe key a live job holds (or whose id exists)
        answers with that job (`created=False`) and writes nothing."""
        if not jobs:
            return []
        sql, params = self.enqueue_statement(jobs)

        async def tx(conn: Conn) -> list[EnqueueResult]:
            cur = await conn.execute(sql, params)
            return enqueue_results(await cur.fetchall())

        results = await self._run(tx)
        self._notify(jobs=True, events=True)
        return results

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
        """Apply `outcomes`, then claim up to `limit` jobs, in one transaction.

        See `conveyor.engines.base.JobFlow` and `conveyor.lifecycle` for the contract.
        """
        # Recorded before the transaction: a notification after this point makes the
        # next wait_for_jobs return at once instead of missing it.
        if limit > 0:
            self._exchange_generation = self._jobs_wake.generation

        async def tx(conn: Conn) -> tuple[Exchange, bool]:
            return await self._exchange_tx(conn, outcomes, queues, limit, worker_id, lease_ms)

        result, woke = await self._run(tx)
        self._notify(jobs=woke, events=bool(outcomes or result.jobs or woke))
        return result

    async def _exchange_tx(
        self,
        conn: Conn,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> tuple[Exchange, bool]:
        now = await self._now(conn)
        events: list[tuple[Any, ...]] = []
        limits = await self._read_limits(conn)
        slotted = {q for q, lim in limits.items() if lim.concurrency or lim.tenant_concurrency}
        lost, woke = await self._apply_outcomes(conn, outcomes, now, events, slotted)
        claimed: list[Job] = []
        recovered = 0
        hint: int | None = None
        if limit > 0:
            cur = await conn.execute(self.q["paused_queues"])
            paused = {str(row[0]) for row in await cur.fetchall()}
            for queue in queues:
                await conn.execute(self.q["promote_due"], (queue, now, PROMOTE_BATCH))
                stalled, failed = await self._recover(conn, queue, now, events)
                recovered += stalled + failed
                woke |= stalled > 0 or (failed > 0 and queue in slotted)
                if queue in paused or len(claimed) >= limit:
                    continue
                params = {
                    "now": now,
                    "worker": worker_id,
                    "lease_until": now + lease_ms,
                    "queue": queue,
                    "limit": limit - len(claimed),
                }
                lim = limits.get(queue)
                if lim is None and not await self._one(conn, "has_tenant_jobs", (queue,)):
                    # The common case: no limits and no tenant jobs, so the best jobs are
                    # simply the first ones, and claimers do not wait on each other.
                    cur = await conn.execute(self.q["claim"], params)
                    rows = list(await cur.fetchall())
                    rows.sort(key=_claim_order)  # RETURNING order is unspecified
                else:
                    rows, wait = await self._claim_fair(conn, lim or QueueLimits(), params)
                    if wait is not None and (hint is None or wait < hint):
                        hint = wait
                for row in rows:
                    events.append(event_row(queue, "started", row[0], row[2], row[8], row[5], now))
                    claimed.append(decode_lenient(self._fields(row)))
        await self._add_events(conn, events)
        if woke:
            await self._send(conn, jobs=True)
        next_due = await self._next_due(conn, queues, now)
        if hint is not None and (next_due is None or hint < next_due):
            next_due = hint
        return Exchange(claimed, lost, next_due_ms=next_due, recovered=recovered), woke

    async def _one(self, conn: Conn, name: str, params: Sequence[Any]) -> Any:
        """The first column of the first row of query `name`, or None."""
        cur = await conn.execute(self.q[name], params)
        row = await cur.fetchone()
        return None if row is None else row[0]

    async def _apply_outcomes(
        self,
        conn: Conn,
        outcomes: Sequence[Outcome],
        now: int,
        events: list[tuple[Any, ...]],
        slotted: set[str],
    ) -> tuple[list[str], bool]:
        """Apply token-fenced outcomes; returns (lost job ids, whether work became ready)."""
        lost: list[str] = []
        woke = False
        completed: set[str] = set()
        done = [o for o in outcomes if o.kind == "complete"]
        if done:
            cur = await conn.execute(
                self.complete_sql,
                {
                    "now": now,
                    "ids": [o.job_id for o in done],
                    "tokens": [o.token for o in done],
                    "results": [o.result_json for o in done],
                },
            )
            event = TRANSITIONS["complete"].event
            for job_id, queue, task, tenant, attempt in await cur.fetchall():
                completed.add(job_id)
                woke |= queue in slotted
                events.append(event_row(queue, event, job_id, task, tenant, attempt, now))
        for o in outcomes:
            if o.kind == "complete":
                if o.job_id not in completed:
                    lost.append(o.job_id)
                continue
            row = await self._transition(
                conn, o.kind, o.job_id, o.token, now, o.delay_ms, o.error_json
            )
            if row is None:
                lost.append(o.job_id)
                continue
            t = TRANSITIONS[o.kind]
            data: dict[str, Any] = {}
            if t.append_error:
                data["error"] = _message(o.error_json)
            if o.reason is not None:
                data["reason"] = o.reason
            if t.later_state is not None:
                data["delay_ms"] = o.delay_ms
            woke |= t.target(o.delay_ms) is JobState.PENDING or row[0] in slotted
            events.append(
                event_row(row[0], t.event, o.job_id, row[1], row[2], row[3], now,
                          orjson.dumps(data).decode() if data else None)
            )  # fmt: skip
        return lost, woke

    async def _transition(
        self,
        conn: Conn,
        kind: TransitionKind,
        job_id: str,
        token: str,
        now: int,
        delay_ms: int = 0,
        error_json: str | None = None,
    ) -> tuple[Any, ...] | None:
        """Apply `lifecycle.TRANSITIONS[kind]` to one running job (fenced by `token`).

        Returns:
            (queue, task, tenant, attempt), or None when the lease was gone.
        """
        params = {
            "id": job_id,
            "token": token,
            "now": now,
            "due": now + delay_ms,
            "err": error_json,
            "result": None,
        }
        cur = await conn.execute(self.outcome_sql[(kind, delay_ms > 0)], params)
        row: tuple[Any, ...] | None = await cur.fetchone()
        return row

    async def _recover(
        self, conn: Conn, queue: str, now: int, events: list[tuple[Any, ...]]
    ) -> tuple[int, int]:
        """Recover expired leases of `queue`; returns (back to pending, failed).

        `expire` keeps the job's place in line; `expire_last` (its attempts are spent)
        fails it with `lifecycle.lease_expired_error`, which is what ends crash loops.
        """
        stalled = failed = 0
        cur = await conn.execute(self.q["expired_leases"], (queue, now, RECOVER_BATCH))
        for job_id, token, attempt, max_attempts in await cur.fetchall():
            kind: TransitionKind = "expire" if attempt < max_attempts else "expire_last"
            t = TRANSITIONS[kind]
            error = lease_expired_error(attempt, now) if t.append_error else None
            row = await self._transition(conn, kind, job_id, token, now, error_json=error)
            if row is None:
                continue
            data = _LEASE_FAILED_DATA if t.append_error else None
            events.append(event_row(queue, t.event, job_id, row[1], row[2], row[3], now, data))
            if t.finishes:
                failed += 1
            else:
                stalled += 1
        return stalled, failed

    async def _next_due(self, conn: Conn, queues: Sequence[str], now: int) -> int | None:
        due = await self._one(conn, "next_due", (list(queues),))
        return None if due is None else max(0, int(due) - now)

    # --- fairness and limits ------------------------------------------------------------
    # The same rotation as the SQLite engine (`SqliteFlow._claim_fair`): each claim serves
    # the least recently served bucket with pending jobs, one job per turn, and moves it
    # to the back whether it took a job or passed at its limit. Under the queue's
    # advisory lock (see the module docstring).
    async def _read_limits(self, conn: Conn) -> dict[str, QueueLimits]:
        cur = await conn.execute(self.q["read_limits"])
        return {str(row[0]): QueueLimits(*row[1:]) for row in await cur.fetchall()}

    async def _window(
        self, conn: Conn, queue: str, scope: str, now: int, window_ms: int
    ) -> tuple[int, int | None]:
        """(starts inside the window, the oldest of them) after dropping older ones."""
        await conn.execute(self.q["rate_window_drop"], (queue, scope, now - window_ms))
        cur = await conn.execute(self.q["rate_window_read"], (queue, scope))
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), None if row[1] is None else int(row[1])

    async def _claim_fair(
        self, conn: Conn, lim: QueueLimits, params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int | None]:
        """Claim up to params["limit"] jobs of one queue under its limits, tenants taking
        turns. Returns the claimed rows in claim order and the ms until a rate window
        reopens when a rate held jobs back (else None)."""
        queue, now = params["queue"], params["now"]
        await conn.execute(self.q["queue_lock"], (f"{self.schema}:claim:{queue}",))
        room = int(params["limit"])
        hint: int | None = None

        def hold(until: int | None, window_ms: int) -> None:
            nonlocal hint
            wait = (until or now) + window_ms - now
            hint = wait if hint is None else min(hint, wait)

        if lim.concurrency is not None:
            running = int(await self._one(conn, "running_count", (queue,)) or 0)
            room = min(room, lim.concurrency - running)
        if lim.rate is not None:
            started, oldest = await self._window(conn, queue, "", now, lim.rate_window_ms)
            if started >= lim.rate:
                hold(oldest, lim.rate_window_ms)
            room = min(room, lim.rate - started)
        out: list[tuple[Any, ...]] = []
        budget = max(room, 0) + TURN_BUDGET
        while room > 0 and budget > 0:
            cur = await conn.execute(self.q["ready_tenants"], (queue, ROTATION_PAGE))
            buckets: list[tuple[int, str, int]] = [
                (int(turn), str(tenant), int(running))
                for tenant, turn, running in await cur.fetchall()
            ]
            if await self._one(conn, "has_free_jobs", (queue,)):
                turn = await self._one(conn, "free_bucket_turn", (queue,))
                buckets.append((int(turn or 0), "", 0))
            buckets.sort()
            if not buckets:
                break
            served = False
            for _, tenant, running_now in buckets:
                if room <= 0 or budget <= 0:
                    break
                budget -= 1
                allowed = room if len(buckets) == 1 else 1
                if tenant:  # jobs without a tenant are not subject to tenant limits
                    if lim.tenant_concurrency is not None:
                        allowed = min(allowed, lim.tenant_concurrency - running_now)
                    if lim.tenant_rate is not None:
                        started, oldest = await self._window(
                            conn, queue, tenant, now, lim.tenant_rate_window_ms
                        )
                        if started >= lim.tenant_rate:
                            hold(oldest, lim.tenant_rate_window_ms)
                        allowed = min(allowed, lim.tenant_rate - started)
                # Served or passed: to the back of the line.
                turn = await self._one(conn, "next_turn", ())
                await conn.execute(self.q["set_turn"], (queue, tenant, turn))
                if allowed <= 0:
                    continue
                cur = await conn.execute(
                    self.q["claim_tenant" if tenant else "claim"],
                    {**params, "limit": allowed, "tenant": tenant},
                )
                rows = list(await cur.fetchall())
                if not rows:
                    continue
                served = True
                room -= len(rows)
                rows.sort(key=_claim_order)
                out.extend(rows)
                if lim.rate is not None:
                    await conn.execute(self.q["rate_log_add"], (queue, "", now, len(rows)))
                if tenant and lim.tenant_rate is not None:
                    await conn.execute(self.q["rate_log_add"], (queue, tenant, now, len(rows)))
            if not served:
                break
        return out, hint

    # --- leases of running jobs ---------------------------------------------------------
    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend the leases `(job_id, token)` to now + lease_ms; return ids that were lost."""
        if not leases:
            return []

        async def tx(conn: Conn) -> list[str]:
            until = await self._now(conn) + lease_ms
            cur = await conn.execute(
                self.q["extend_leases"],
                (until, [j for j, _ in leases], [t for _, t in leases]),
            )
            kept = {str(r[0]) for r in await cur.fetchall()}
            return [job_id for job_id, _ in leases if job_id not in kept]

        return await self._run(tx)

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress for a running job; False when the lease is gone."""

        async def tx(conn: Conn) -> bool:
            cur = await conn.execute(
                self.q["set_progress"], {"progress": progress_json, "id": job_id, "token": token}
            )
            row = await cur.fetchone()
            if row is None:
                return False
            data = '{"progress":' + progress_json + "}"
            now = await self._now(conn)
            await self._add_events(
                conn, [event_row(row[0], "progress", job_id, row[1], row[2], row[3], now, data)]
            )
            return True

        stored = await self._run(tx)
        self._notify(events=stored)
        return stored

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""

        async def tx(conn: Conn) -> int:
            now = await self._now(conn)
            events: list[tuple[Any, ...]] = []
            total = 0
            for queue in queues:
                total += sum(await self._recover(conn, queue, now, events))
            await self._add_events(conn, events)
            if total:
                await self._send(conn, jobs=True)
            return total

        recovered = await self._run(tx)
        self._notify(jobs=bool(recovered), events=bool(recovered))
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
