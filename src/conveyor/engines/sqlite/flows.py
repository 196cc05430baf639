"""Flows on SQLite: store a flow whole, and settle a flow job's finish atomically.

A trigger (migration 0004) records every flow job that finishes, however it finishes
(an outcome, a lease expiry, an operator cancel), in `flow_settle`; `_settle_flows`
runs at the end of every write transaction (`SqliteCore._write`) and applies
`conveyor.lifecycle` rule 6 before the transaction commits, so a child's finish and
its parent's release (or failure) are one atomic step. Settling may finish more flow
jobs (a failed parent, cancelled descendants); they are recorded by the same trigger
and settled in the same loop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ...job import ACTIVE_STATES, EnqueueResult, JobState
from ...lifecycle import (
    FLOW_READY_EVENT,
    child_failed_error,
    comes_back,
    fails_parent,
    not_found,
)
from ..sql_common import new_job_row
from ..values import FlowLinks, FlowNode
from .connection import Q, SqliteCore, event_data

_LIVE = {s.value for s in ACTIVE_STATES}
_WAITING = JobState.WAITING.value


class SqliteFlows(SqliteCore):
    """enqueue_flow, flow_links, and the settle step of every write transaction."""

    async def enqueue_flow(self, nodes: Sequence[FlowNode]) -> EnqueueResult:
        """Store a flow in one transaction; see `conveyor.engines.base.Flows`."""
        result = await self._write(lambda conn: self._flow_tx(conn, nodes))
        if result.created:
            self._jobs_wake.notify()
            self._events_wake.notify()
        return result

    def _flow_tx(self, conn: sqlite3.Connection, nodes: Sequence[FlowNode]) -> EnqueueResult:
        root = nodes[0].job
        held = conn.execute(Q["job_state"], (root.id,)).fetchone()
        if held is None and root.dedupe_key is not None:
            held = conn.execute(Q["dedupe_holder"], (root.queue, root.dedupe_key)).fetchone()
        if held is not None:
            return EnqueueResult(held[0], False, JobState(held[1]))
        now = self.clock.now_ms()
        base = self._reserve_seq(conn, len(nodes))
        events: list[tuple[Any, ...]] = []
        states: list[JobState] = []
        for i, node in enumerate(nodes):
            new = node.job
            state, head = new_job_row(new, now, waits=node.waits)
            states.append(state)
            conn.execute(
                Q["insert_flow_job"],
                (*head, base + i, node.parent_id, node.policy if node.parent_id else None),
            )
            events.append((new.queue, "enqueued", new.id, new.task, new.tenant, 0, now, None))
        conn.execute(Q["mark_queues_known"], (root.queue,))
        self._add_events(conn, events)
        return EnqueueResult(root.id, True, states[0])

    async def flow_links(self, job_id: str) -> FlowLinks:
        """The job's parent and children; raises `JobNotFound`."""

        def read(conn: sqlite3.Connection) -> FlowLinks:
            row = conn.execute(Q["flow_job"], (job_id,)).fetchone()
            if row is None:
                raise not_found(job_id)
            kids = conn.execute(Q["flow_children"], (job_id,)).fetchall()
            return FlowLinks(job_id, row[1], row[2], tuple(str(k[0]) for k in kids))

        return await self._call(read)

    # --- settling (inside the caller's transaction) ------------------------------------------
    def _settle_flows(self, conn: sqlite3.Connection) -> bool:
        """Apply lifecycle rule 6 to the flow jobs this transaction finished; returns
        whether a parent became pending (idle workers must hear of it)."""
        if conn.execute(Q["flow_settle_take"]).fetchone() is None:
            return False
        now = self.clock.now_ms()
        woke = False
        while rows := conn.execute(Q["flow_settle_take"]).fetchall():
            conn.execute(Q["flow_settle_done"], (rows[-1][0],))
            events: list[tuple[Any, ...]] = []
            for _, job_id in rows:
                woke |= self._settle_one(conn, str(job_id), now, events)
            self._add_events(conn, events)
        return woke

    def _settle_one(
        self, conn: sqlite3.Connection, job_id: str, now: int, events: list[tuple[Any, ...]]
    ) -> bool:
        row = conn.execute(Q["flow_job"], (job_id,)).fetchone()
        if row is None:
            return False
        state, parent_id, policy, queue = row[0], row[1], row[2], row[3]
        if state != JobState.COMPLETED.value:
            # A node that did not complete takes its unfinished descendants with it (the
            # cancelled children are settled in turn and cancel theirs).
            data = event_data(reason=f"flow parent {job_id} ended {state}")
            for kid, kstate, _, task, tenant, attempt in conn.execute(
                Q["flow_children"], (job_id,)
            ).fetchall():
                if kstate in _LIVE:
                    conn.execute(Q["cancel"], (now, kid))
                    events.append((queue, "cancelled", kid, task, tenant, attempt, now, data))
        if parent_id is None:
            return False
        parent = conn.execute(Q["flow_job"], (parent_id,)).fetchone()
        if parent is None or parent[0] != _WAITING:
            return False
        if fails_parent(state, policy or ""):
            err = child_failed_error(job_id, state, now)
            conn.execute(Q["flow_fail_parent"], {"id": parent_id, "now": now, "err": err})
            data = event_data(error=f"child {job_id} ended {state}")
            events.append((parent[3], "failed", parent_id, parent[4], parent[5], 0, now, data))
            return False
        if conn.execute(Q["flow_holding_children"], (parent_id,)).fetchone()[0]:
            return False
        seq = self._reserve_seq(conn, 1)
        conn.execute(Q["flow_release_parent"], {"id": parent_id, "seq": seq})
        events.append((parent[3], FLOW_READY_EVENT, parent_id, parent[4], parent[5], 0, now, None))
        return True

    def _rearm_parent(self, conn: sqlite3.Connection, job_id: str, now: int) -> None:
        """After an operator retry of `job_id`: its failed parent waits again, the
        parent's cancelled children go back to pending (or wait again, if they have
        children), and so on up the tree (lifecycle rule 6)."""
        self._rewait(conn, job_id, now)
        row = conn.execute(Q["flow_job"], (job_id,)).fetchone()
        parent_id = row[1] if row else None
        while parent_id is not None:
            parent = conn.execute(Q["flow_job"], (parent_id,)).fetchone()
            if parent is None or parent[0] != JobState.FAILED.value:
                return
            if not conn.execute(Q["flow_rearm"], (parent_id,)).rowcount:
                return  # its dedupe key is held by another live job: it stays failed
            events: list[tuple[Any, ...]] = [
                (parent[3], "enqueued", parent_id, parent[4], parent[5], 0, now,
                 event_data(retried_by="operator", flow="re-armed"))
            ]  # fmt: skip
            self._rearm_children(conn, parent_id, now, events)
            self._add_events(conn, events)
            parent_id = parent[1]

    def _rewait(self, conn: sqlite3.Connection, job_id: str, now: int) -> None:
        """An operator-retried parent: the children that failed it or that its failure
        cancelled come back, and it waits again while any child is unfinished."""
        if conn.execute(Q["flow_children"], (job_id,)).fetchone() is None:
            return
        events: list[tuple[Any, ...]] = []
        self._rearm_children(conn, job_id, now, events)
        self._add_events(conn, events)
        if conn.execute(Q["flow_live_children"], (job_id,)).fetchone()[0]:
            conn.execute(Q["flow_rewait"], (job_id,))

    def _rearm_children(
        self, conn: sqlite3.Connection, parent_id: str, now: int, events: list[tuple[Any, ...]]
    ) -> None:
        """The children that failed the parent or that its failure cancelled come back
        (`lifecycle.comes_back`): pending (scheduled while
        their own due time is ahead), or waiting again (with their own cancelled children
        back) when they have children."""
        for kid, kstate, policy, task, tenant, _ in conn.execute(
            Q["flow_children"], (parent_id,)
        ).fetchall():
            if not comes_back(kstate, policy or ""):
                continue
            has_kids = conn.execute(Q["flow_children"], (kid,)).fetchone() is not None
            if has_kids:
                conn.execute(Q["flow_rearm"], (kid,))
                self._rearm_children(conn, kid, now, events)
                if not conn.execute(Q["flow_live_children"], (kid,)).fetchone()[0]:
                    # its children had all completed: nothing to wait for
                    seq = self._reserve_seq(conn, 1)
                    conn.execute(Q["flow_release_parent"], {"id": kid, "seq": seq})
            else:
                seq = self._reserve_seq(conn, 1)
                conn.execute(Q["flow_rearm_leaf"], {"id": kid, "now": now, "seq": seq})
            queue = conn.execute(Q["flow_job"], (kid,)).fetchone()[3]
            events.append((queue, "enqueued", kid, task, tenant, 0, now,
                           event_data(retried_by="operator", flow="re-armed")))  # fmt: skip
