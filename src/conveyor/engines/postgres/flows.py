"""Flows on Postgres: a flow is stored in one transaction; the trigger
``jobs_flow_settle`` (migration 0006) settles a flow job's finish inside the statement
that finished it, so a child's finish and its parent's release commit together."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...job import EnqueueResult, JobState
from ...lifecycle import not_found
from ..sql_common import new_job_row
from ..values import FlowLinks, FlowNode
from .connection import Conn, PgCore, event_row


class PgFlows(PgCore):
    """enqueue_flow and flow_links."""

    async def enqueue_flow(self, nodes: Sequence[FlowNode]) -> EnqueueResult:
        """Store a flow in one transaction; see `conveyor.engines.base.Flows`."""
        root = nodes[0].job

        async def tx(conn: Conn) -> EnqueueResult:
            if root.dedupe_key is not None:
                key = f"conveyor-flow:{root.queue}:{root.dedupe_key}"
                await conn.execute(self.q["flow_key_lock"], (key,))
            cur = await conn.execute(self.q["flow_holder"], (root.id, root.queue, root.dedupe_key))
            held = await cur.fetchone()
            if held is not None:
                return EnqueueResult(str(held[0]), False, JobState(str(held[1])))
            now = await self._now(conn)
            rows: list[tuple[Any, ...]] = []
            events = []
            states = []
            for node in nodes:
                new = node.job
                state, head = new_job_row(new, now, waits=node.waits)
                states.append(state)
                rows.append((*head, node.parent_id, node.policy if node.parent_id else None))
                events.append(event_row(new.queue, "enqueued", new.id, new.task, new.tenant,
                                        0, now))  # fmt: skip
            async with conn.cursor() as c:
                await c.executemany(self.q["insert_flow_job"], rows)
                tenants = {(n.job.queue, n.job.tenant) for n in nodes if n.job.tenant}
                if tenants:
                    await c.executemany(self.q["flow_tenant"], sorted(tenants))
            await conn.execute(self.q["flow_mark_queue"], (root.queue,))
            await self._add_events(conn, events)
            await self._send(conn, jobs=True, events=True)
            return EnqueueResult(root.id, True, states[0])

        result = await self._run(tx)
        if result.created:
            self._notify(jobs=True, events=True)
        return result

    async def flow_links(self, job_id: str) -> FlowLinks:
        """The job's parent and children; raises `JobNotFound`."""

        async def read(conn: Conn) -> FlowLinks:
            cur = await conn.execute(self.q["flow_links"], (job_id,))
            row = await cur.fetchone()
            if row is None:
                raise not_found(job_id)
            kids = tuple(str(k) for k in row[2] or ())
            return FlowLinks(job_id, row[0], row[1], kids)

        return await self._run(read, single=True)
