"""The job flow on SQLite: enqueue, exchange (outcomes, promotion, recovery, claims),
heartbeats, progress and the wake-up notifier.

Atomic claims across processes: every write runs in ``BEGIN IMMEDIATE``, which takes
the database's single write lock up front, so two processes claiming at once are
serialised: the second one's ``UPDATE ... WHERE state = 'pending'`` runs after the
first has committed and cannot see the rows the first one took.

Wake-ups: SQLite has no cross-process notification. Within the process, a `Wake` set
after this engine's own commits wakes waiters at once; the same notification pokes the
wake-up socket of every waiting engine of other processes (`wakeups`). Where there is
no socket, waiters poll ``PRAGMA data_version`` every ~15 ms: it changes when *another*
connection commits, and reading it touches only the shared-memory WAL index.
Spurious wake-ups (any commit, e.g. a heartbeat) are allowed by the contract.
"""

from __future__ import annotations

import sqlite3
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
    Place,
    TransitionKind,
    lease_expired_error,
    outcome_event_data,
)
from ...limits import QueueLimits
from ..values import Exchange, Outcome
from .connection import Q, SqliteCore, event_data
from .transitions import COMPLETE_BATCH, statement

_LEASE_FAILED_DATA = orjson.dumps(LEASE_EXPIRED_EVENT).decode()


def _claim_order(row: Sequence[Any]) -> tuple[int, int]:
    """Claim order of a job row: priority (high first), then FIFO position."""
    return -int(row[7]), int(row[22])


class SqliteFlow(SqliteCore):
    """Producers and workers: the hot path."""

    # --- producers ------------------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        """Store `jobs` in one transaction (all or nothing); results in input order.

        A job whose dedupe key a live job holds (or whose id exists) answers with that
        job (`created=False`) and writes nothing.
        """
        if not jobs:
            return []
        # settles=False: an enqueue only inserts, so it finishes no flow job.
        results = await self._write(lambda conn: self._enqueue_tx(conn, jobs), settles=False)
        self._jobs_wake.notify()
        self._events_wake.notify()
        return results

    def _enqueue_tx(self, conn: sqlite3.Connection, jobs: Sequence[NewJob]) -> list[EnqueueResult]:
        now = self.clock.now_ms()
        base = self._reserve_seq(conn, len(jobs))
        results: list[EnqueueResult] = []
        plain: list[tuple[Any, ...]] = []  # rows without a dedupe key: one executemany
        plain_at: list[int] = []  # their positions in `results`
        for i, new in enumerate(jobs):
            # `sql_common.new_job_row`'s rule and columns, inline: the call cost ~2,000
            # instructions a job (+1.2 % of a memory:// enqueue, bench/RESULTS.md `dedupe`).
            due = new.run_at_ms if new.run_at_ms is not None else now + new.delay_ms
            state = JobState.SCHEDULED if due > now else JobState.PENDING
            row = (
                new.id, new.queue, new.task, new.payload_json, state.value, new.max_attempts,
                new.priority, new.tenant, new.dedupe_key,
                None if new.timeout is None else int(new.timeout * 1000),
                new.backoff_json, now, due if state is JobState.SCHEDULED else None, base + i,
            )  # fmt: skip
            results.append(EnqueueResult(new.id, True, state))
            if new.dedupe_key is None:
                plain.append(row)
                plain_at.append(i)
            elif conn.execute(Q["insert_job"], row).rowcount == 0:
                # The same id exists already, or the key is held by a live job (maybe
                # one earlier in this batch): answer with that job.
                held = (
                    conn.execute(Q["job_state"], (new.id,)).fetchone()
                    or conn.execute(Q["dedupe_holder"], (new.queue, new.dedupe_key)).fetchone()
                )
                results[i] = EnqueueResult(held[0], False, JobState(held[1]))
        if plain and conn.executemany(Q["insert_job"], plain).rowcount < len(plain):
            # Rare: some ids existed already. A row is ours iff it has the seq we gave it.
            for row, i in zip(plain, plain_at, strict=True):
                _, state_now, seq = conn.execute(Q["job_state"], (row[0],)).fetchone()
                if seq != row[13]:
                    results[i] = EnqueueResult(row[0], False, JobState(state_now))
        conn.executemany(Q["mark_queues_known"], [(q,) for q in {new.queue for new in jobs}])
        self._add_events(
            conn,
            [
                (new.queue, "enqueued", new.id, new.task, new.tenant, 0, now, None)
                for new, res in zip(jobs, results, strict=True)
                if res.created
            ],
        )
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
        # Recorded before the transaction: an enqueue in this process after this point
        # makes the next wait_for_jobs return at once instead of missing it.
        # (Acknowledge-only calls, limit == 0, must not move this baseline.)
        if limit > 0:
            self._exchange_generation = self._jobs_wake.generation
        result, woke = await self._write(
            lambda conn: self._exchange_tx(conn, outcomes, queues, limit, worker_id, lease_ms),
            durable=False,
        )
        if woke:
            self._jobs_wake.notify()
        if outcomes or result.jobs or woke:
            self._events_wake.notify()
        return result

    def _exchange_tx(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ms: int,
    ) -> tuple[Exchange, bool]:
        # Read under the write lock: any commit by another connection after this point
        # changes data_version, which wait_for_jobs compares against.
        if limit > 0:
            self._last_version = self._data_version(conn)
        now = self.clock.now_ms()
        events: list[tuple[Any, ...]] = []
        limits = self._read_limits(conn)
        # A running job of these queues that stops running frees a slot that idle
        # workers (held back by the limit) must hear about.
        slotted = {q for q, lim in limits.items() if lim.concurrency or lim.tenant_concurrency}
        lost, woke = self._apply_outcomes(conn, outcomes, now, events, slotted)
        claimed: list[Job] = []
        recovered = 0
        hint: int | None = None
        if limit > 0:
            paused = {row[0] for row in conn.execute(Q["paused_queues"]).fetchall()}
            for queue in queues:
                self._promote_due(conn, queue, now)
                stalled, failed = self._recover(conn, queue, now, events)
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
                if lim is None and not conn.execute(Q["has_tenant_jobs"], (queue,)).fetchone():
                    # The common case, as fast as before fairness existed: no limits and
                    # no tenant jobs pending, so the best jobs are simply the first ones.
                    rows = conn.execute(Q["claim"], params).fetchall()
                    rows.sort(key=_claim_order)  # RETURNING order is unspecified
                else:
                    rows, wait = self._claim_fair(conn, lim or QueueLimits(), params)
                    if wait is not None and (hint is None or wait < hint):
                        hint = wait
                for row in rows:
                    events.append((queue, "started", row[0], row[2], row[8], row[5], now, None))
                    claimed.append(decode_lenient(self._fields(row)))
        self._add_events(conn, events)
        next_due = self._next_due(conn, queues, now)
        if hint is not None and (next_due is None or hint < next_due):
            next_due = hint
        return Exchange(claimed, lost, next_due_ms=next_due, recovered=recovered), woke

    def _apply_outcomes(
        self,
        conn: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        now: int,
        events: list[tuple[Any, ...]],
        slotted: set[str],
    ) -> tuple[list[str], bool]:
        """Apply token-fenced outcomes; returns (lost job ids, whether work became ready).

        Work becomes ready when a job goes back to pending, or when a job of a queue in
        `slotted` (it has a concurrency limit) stops running and frees a slot.
        """
        lost: list[str] = []
        woke = False
        completed: set[str] = set()
        # Completions are most outcomes: one statement applies all of them.
        batch = [[o.job_id, o.token, o.result_json] for o in outcomes if o.kind == "complete"]
        if batch:
            rows = conn.execute(
                COMPLETE_BATCH, {"now": now, "batch": orjson.dumps(batch).decode()}
            ).fetchall()
            event = TRANSITIONS["complete"].event
            for job_id, queue, task, tenant, attempt in rows:
                completed.add(job_id)
                woke |= queue in slotted
                events.append((queue, event, job_id, task, tenant, attempt, now, None))
        for o in outcomes:
            if o.kind == "complete":
                if o.job_id not in completed:
                    lost.append(o.job_id)
                continue
            row = self._transition(conn, o.kind, o.job_id, o.token, now, o.delay_ms, o.error_json)
            if row is None:
                lost.append(o.job_id)
                continue
            t = TRANSITIONS[o.kind]
            data = outcome_event_data(o.kind, o.error_json, o.reason, o.delay_ms)
            woke |= t.target(o.delay_ms) is JobState.PENDING or row[0] in slotted
            events.append(
                (row[0], t.event, o.job_id, row[1], row[2], row[3], now,
                 event_data(**data) if data else None)
            )  # fmt: skip
        return lost, woke

    def _transition(
        self,
        conn: sqlite3.Connection,
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
        t = TRANSITIONS[kind]
        params: dict[str, Any] = {"id": job_id, "token": token, "now": now}
        target = t.target(delay_ms)
        if target is JobState.SCHEDULED:
            params["due"] = now + delay_ms
        elif target is JobState.PENDING and t.place is Place.FRONT:
            params["seq"] = self._front_seq(conn)
        elif target is JobState.PENDING and t.place is Place.BACK:
            params["seq"] = self._reserve_seq(conn, 1)
        if t.append_error:
            params["err"] = error_json
        row: tuple[Any, ...] | None = conn.execute(statement(kind, delay_ms), params).fetchone()
        return row

    def _promote_due(self, conn: sqlite3.Connection, queue: str, now: int) -> int:
        """Move due scheduled jobs of `queue` to the back of pending, oldest due first."""
        rowids = conn.execute(Q["due_scheduled"], (queue, now, PROMOTE_BATCH)).fetchall()
        if rowids:
            base = self._reserve_seq(conn, len(rowids))
            conn.executemany(Q["promote_row"], [(base + i, r[0]) for i, r in enumerate(rowids)])
        return len(rowids)

    def _recover(
        self, conn: sqlite3.Connection, queue: str, now: int, events: list[tuple[Any, ...]]
    ) -> tuple[int, int]:
        """Recover expired leases of `queue`; returns (back to pending, failed).

        `expire` keeps the job's place in line; `expire_last` (its attempts are spent)
        fails it with `lifecycle.lease_expired_error`, which is what ends crash loops.
        """
        stalled = failed = 0
        for job_id, token, attempt, max_attempts in conn.execute(
            Q["expired_leases"], (queue, now, RECOVER_BATCH)
        ).fetchall():
            kind: TransitionKind = "expire" if attempt < max_attempts else "expire_last"
            t = TRANSITIONS[kind]
            error = lease_expired_error(attempt, now) if t.append_error else None
            row = self._transition(conn, kind, job_id, token, now, error_json=error)
            if row is None:
                continue
            data = _LEASE_FAILED_DATA if t.append_error else None
            events.append((queue, t.event, job_id, row[1], row[2], row[3], now, data))
            if t.finishes:
                failed += 1
            else:
                stalled += 1
        return stalled, failed

    @staticmethod
    def _next_due(conn: sqlite3.Connection, queues: Sequence[str], now: int) -> int | None:
        earliest: int | None = None
        for queue in queues:
            due = conn.execute(Q["next_due"], (queue,)).fetchone()[0]
            if due is not None and (earliest is None or due < earliest):
                earliest = int(due)
        return None if earliest is None else max(0, earliest - now)

    # --- fairness and limits ------------------------------------------------------------
    # Tenants take turns through the `tenants` table: each claim serves the least
    # recently served bucket that has pending jobs, one job per turn, and moves it to
    # the back of the line whether it took a job or passed because it is at its limit.
    # All of it runs inside the exchange's BEGIN IMMEDIATE transaction, so the limits
    # hold across processes: the second of two claiming workers reads the running
    # counts the first one's claim left (the triggers keep them inside the transaction).
    @staticmethod
    def _read_limits(conn: sqlite3.Connection) -> dict[str, QueueLimits]:
        return {row[0]: QueueLimits(*row[1:]) for row in conn.execute(Q["read_limits"])}

    @staticmethod
    def _window(
        conn: sqlite3.Connection, queue: str, scope: str, now: int, window_ms: int
    ) -> tuple[int, int | None]:
        """(starts inside the window, the oldest of them) after dropping older ones."""
        conn.execute(Q["rate_window_drop"], (queue, scope, now - window_ms))
        count, oldest = conn.execute(Q["rate_window_read"], (queue, scope)).fetchone()
        return int(count), None if oldest is None else int(oldest)

    def _claim_fair(
        self, conn: sqlite3.Connection, lim: QueueLimits, params: dict[str, Any]
    ) -> tuple[list[tuple[Any, ...]], int | None]:
        """Claim up to params["limit"] jobs of one queue under its limits, tenants taking
        turns. Returns the claimed rows in claim order (the buckets in the order they were
        served, each in priority/FIFO order) and the ms until a rate window reopens when a
        rate held jobs back (else None)."""
        queue, now = params["queue"], params["now"]
        room = int(params["limit"])
        hint: int | None = None

        def hold(until: int | None, window_ms: int) -> None:
            nonlocal hint
            wait = (until or now) + window_ms - now
            hint = wait if hint is None else min(hint, wait)

        if lim.concurrency is not None:
            running = conn.execute(Q["running_count"], (queue,)).fetchone()
            room = min(room, lim.concurrency - (int(running[0]) if running else 0))
        if lim.rate is not None:
            started, oldest = self._window(conn, queue, "", now, lim.rate_window_ms)
            if started >= lim.rate:
                hold(oldest, lim.rate_window_ms)
            room = min(room, lim.rate - started)
        out: list[tuple[Any, ...]] = []
        budget = max(room, 0) + TURN_BUDGET
        while room > 0 and budget > 0:
            # The rotation: tenants with pending jobs, plus the bucket of jobs without a
            # tenant when it has any, least recently served first.
            buckets: list[tuple[int, str, int]] = [
                (int(turn), str(tenant), int(running))
                for tenant, running, turn in conn.execute(
                    Q["ready_tenants"], (queue, ROTATION_PAGE)
                )
            ]
            if conn.execute(Q["has_free_jobs"], (queue,)).fetchone():
                row = conn.execute(Q["free_bucket_turn"], (queue,)).fetchone()
                buckets.append((int(row[0]) if row else 0, "", 0))
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
                        started, oldest = self._window(
                            conn, queue, tenant, now, lim.tenant_rate_window_ms
                        )
                        if started >= lim.tenant_rate:
                            hold(oldest, lim.tenant_rate_window_ms)
                        allowed = min(allowed, lim.tenant_rate - started)
                # Served or passed: to the back of the line.
                turn = conn.execute(Q["next_turn"]).fetchone()[0]
                conn.execute(Q["set_turn"], (queue, tenant, turn))
                if allowed <= 0:
                    continue
                rows = conn.execute(
                    Q["claim_tenant"] if tenant else Q["claim"],
                    {**params, "limit": allowed, "tenant": tenant},
                ).fetchall()
                if not rows:
                    continue
                served = True
                room -= len(rows)
                rows.sort(key=_claim_order)  # RETURNING order is unspecified
                out.extend(rows)
                log = [""] * len(rows) if lim.rate is not None else []
                if tenant and lim.tenant_rate is not None:
                    log += [tenant] * len(rows)
                if log:
                    conn.executemany(Q["rate_log_add"], [(queue, scope, now) for scope in log])
            if not served:
                break
        return out, hint

    # --- leases of running jobs ---------------------------------------------------------
    async def heartbeat(self, leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        """Extend the leases `(job_id, token)` to now + lease_ms; return ids that were lost."""
        if not leases:
            return []

        def tx(conn: sqlite3.Connection) -> list[str]:
            until = self.clock.now_ms() + lease_ms
            return [
                job_id
                for job_id, token in leases
                if conn.execute(Q["extend_lease"], (until, job_id, token)).rowcount == 0
            ]

        return await self._write(tx, durable=False)

    async def set_progress(self, job_id: str, token: str, progress_json: str) -> bool:
        """Store progress for a running job; False when the lease is gone."""

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                Q["set_progress"], {"progress": progress_json, "id": job_id, "token": token}
            ).fetchone()
            if row is None:
                return False
            data = '{"progress":' + progress_json + "}"
            self._add_events(
                conn,
                [(row[0], "progress", job_id, row[1], row[2], row[3], self.clock.now_ms(), data)],
            )
            return True

        stored = await self._write(tx, durable=False)
        if stored:
            self._events_wake.notify()
        return stored

    async def recover_expired(self, queues: Sequence[str]) -> int:
        """Recover running jobs whose lease expired; returns how many were recovered."""

        def tx(conn: sqlite3.Connection) -> int:
            now = self.clock.now_ms()
            events: list[tuple[Any, ...]] = []
            total = sum(sum(self._recover(conn, queue, now, events)) for queue in queues)
            self._add_events(conn, events)
            return total

        recovered = await self._write(tx)
        if recovered:
            self._jobs_wake.notify()
            self._events_wake.notify()
        return recovered

    # --- the notifier ---------------------------------------------------------------------
    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of `queues` may have claimable work, or after `timeout` s.

        In-process enqueues wake at once; another process's pokes this engine's
        wake-up socket (``PRAGMA data_version`` is polled every ~15 ms where there is
        no socket). Spurious wake-ups are allowed.
        """
        generation = self._exchange_generation
        if generation is None:  # no exchange yet: compare against "now"
            generation = self._jobs_wake.generation
            version = await self._call(self._data_version)
        else:
            version = self._last_version
        await self._wait_for_change(self._jobs_wake, generation, version, timeout)
