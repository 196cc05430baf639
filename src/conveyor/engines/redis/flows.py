"""Flows on Redis: one script stores a flow whole (`lua/enqueue_flow.lua`); every
per-queue script settles a flow job's finish in the same call (`lua/_flows.lua`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ...job import EnqueueResult, JobState, queue_of
from ...lifecycle import not_found
from ..values import FlowLinks, FlowNode
from .connection import RedisBase, driver_errors


class RedisFlows(RedisBase):
    """enqueue_flow and flow_links."""

    @driver_errors
    async def enqueue_flow(self, nodes: Sequence[FlowNode]) -> EnqueueResult:
        """Store a flow in one script call; see `conveyor.engines.base.Flows`."""
        queue = nodes[0].job.queue
        args: list[Any] = [len(nodes)]
        for node in nodes:
            j = node.job
            args += (
                j.id, j.task, j.payload_json, j.max_attempts, j.priority, j.tenant or "",
                j.dedupe_key or "", "" if j.timeout is None else int(j.timeout * 1000),
                j.backoff_json or "", j.delay_ms, "" if j.run_at_ms is None else j.run_at_ms,
                node.parent_id or "", node.policy, 1 if node.waits else 0,
            )  # fmt: skip
        if queue not in self._known_queues:
            await self._client.sadd(self._keys.queues, queue)
            self._known_queues.put(queue, True)
        job_id, created, state = await self._run("enqueue_flow", queue, *args, remember=True)
        return EnqueueResult(str(job_id), bool(created), JobState(state))

    @driver_errors
    async def flow_links(self, job_id: str) -> FlowLinks:
        """The job's parent and children; raises `JobNotFound`."""
        key = self._keys.queue(queue_of(job_id)).job(job_id)
        state, parent, policy, children = await self._client.hmget(
            key, ["state", "parent", "policy", "children"]
        )
        if state is None:
            raise not_found(job_id)
        kids = tuple(str(k) for k in orjson.loads(children)) if children else ()
        return FlowLinks(job_id, _text(parent), _text(policy), kids)


def _text(value: str | bytes | None) -> str | None:
    # The client decodes replies; redis-py's types still allow bytes.
    return value.decode() if isinstance(value, bytes) else value
