"""Flows on the app: a parent job that runs once its children have finished, and the
chain and group built on it (lifecycle rule 6).

The facade validates a whole flow (each item like an `enqueue_many` item, every
enqueue option allowed) and hands the engine its nodes in one call, so the engine
stores it in one atomic step. Reading a flow back (a parent's children's results, the
tree the CLI, API and dashboard show) goes through `flow_links`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..engines.values import FlowLinks, FlowNode
from ..errors import InvalidJob, InvalidPayload
from ..job import Job, JobState
from ..lifecycle import DEFAULT_FLOW_POLICY, FLOW_POLICIES, counted_in_results
from .producer import Enqueued, Producer

__all__ = ["MAX_FLOW_DEPTH", "MAX_FLOW_JOBS", "ChildResult", "FlowProducer"]

# Jobs in one flow: a flow is stored in one atomic step, and this bounds that step.
MAX_FLOW_JOBS: Final = 10_000
# Levels of nesting: a failure at the bottom fails each level above in the same atomic
# step (recursively in Lua and in the Postgres trigger), so depth is bounded.
MAX_FLOW_DEPTH: Final = 100
# Nodes a tree view reads at most (CLI, API, dashboard).
MAX_TREE_NODES: Final = 500


@dataclass(frozen=True, slots=True)
class ChildResult:
    """A finished child as its parent sees it (`job.children_results()`)."""

    id: str
    task: str
    state: JobState
    result: Any = None
    error: str | None = None  # the last error's message, when it did not complete

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "state": self.state.value,
            "result": self.result,
            "error": self.error,
        }


class FlowProducer(Producer):
    """flow / chain / group (async and sync) and the reads of a flow."""

    def build_flow(
        self, parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
    ) -> list[FlowNode]:
        """Validate and encode a flow: root first, every parent before its children.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob: nothing is stored.
        """
        if not isinstance(parent, Mapping):
            raise InvalidJob("flow parent must be a mapping with 'task' (and 'payload', options)")
        nodes: list[FlowNode] = []
        root = dict(parent)
        if "children" in root:
            raise InvalidJob("pass the parent's children as flow(children=[...]), not inside it")
        root["children"] = children
        self._add_node(nodes, root, None, "parent", 0)
        if len(nodes) == 1:
            raise InvalidJob("a flow needs at least one child: use enqueue for a single job")
        return nodes

    def _add_node(
        self, nodes: list[FlowNode], item: Any, parent_id: str | None, where: str, depth: int
    ) -> None:
        if depth > MAX_FLOW_DEPTH:
            raise InvalidJob(
                f"a flow nests at most {MAX_FLOW_DEPTH} levels (a chain has one per step): "
                "split it, and start the next part from the last job of the previous one"
            )
        if not isinstance(item, Mapping):
            raise InvalidJob(f"{where}: each flow item must be a mapping with 'task'")
        spec = dict(item)
        kids = spec.pop("children", None) or []
        if not isinstance(kids, Sequence) or isinstance(kids, str | bytes):
            raise InvalidJob(f"{where}: 'children' must be a list of items")
        policy = spec.pop("on_failure", None)
        if parent_id is None and policy is not None:
            raise InvalidJob(f"{where}: on_failure applies to children (what their failure "
                             "does to their parent); the root has no parent")  # fmt: skip
        policy = DEFAULT_FLOW_POLICY if policy is None else policy
        if policy not in FLOW_POLICIES:
            raise InvalidJob(
                f"{where}: on_failure {policy!r} is not one of {', '.join(FLOW_POLICIES)}"
            )
        if parent_id is not None and spec.get("dedupe_key") is not None:
            raise InvalidJob(
                f"{where}: dedupe_key goes on the flow's parent: the whole flow is stored "
                "once, so the parent's key makes a retried flow() call idempotent"
            )
        if kids and (spec.get("delay") is not None or spec.get("run_at") is not None):
            raise InvalidJob(
                f"{where}: a parent runs when its children have finished; delay or run_at "
                "its children instead"
            )
        try:
            task = spec.pop("task")
        except KeyError:
            raise InvalidJob(f"{where} has no 'task': each flow item needs one") from None
        if len(nodes) >= MAX_FLOW_JOBS:
            raise InvalidJob(f"a flow holds at most {MAX_FLOW_JOBS} jobs: split it")
        payload = spec.pop("payload", None)
        if nodes and "queue" not in spec:
            spec["queue"] = nodes[0].job.queue
        try:
            new = self.build(task, payload, **spec)
        except InvalidPayload as exc:
            raise InvalidPayload(f"{where}: {exc}", fields=exc.fields) from exc
        except InvalidJob as exc:
            raise type(exc)(f"{where}: {exc}") from exc
        if nodes and new.queue != nodes[0].job.queue:
            raise InvalidJob(
                f"{where}: queue {new.queue!r} differs from the flow's {nodes[0].job.queue!r}: "
                "a flow lives in one queue (one atomic step on every engine, one hash slot "
                "on Redis Cluster); route its work by task instead"
            )
        nodes.append(FlowNode(new, parent_id, policy, bool(kids)))
        for i, kid in enumerate(kids):
            self._add_node(nodes, kid, new.id, f"{where}.children[{i}]", depth + 1)

    async def flow(self, parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> Job:
        """Store a parent job and its children (to any depth) in one atomic step.

        Args:
            parent: `task`, optional `payload` and any `enqueue` option (a `dedupe_key`
                here makes a retried call idempotent: it returns the live parent).
            children: items like `enqueue_many` items, each with optional `children`
                (nested) and `on_failure`: `fail_parent` (default), `ignore` or
                `continue` (see `conveyor.lifecycle.FLOW_POLICIES`).

        Returns:
            The parent job (state `waiting-children`), or the live job holding its
            dedupe key.

        Raises:
            UnknownTask, InvalidPayload, PayloadTooLarge, InvalidJob, EngineUnavailable.
        """
        return (await self.store_flow(self.build_flow(parent, children))).job

    async def store_flow(self, nodes: Sequence[FlowNode]) -> Enqueued:
        """Store a flow made by `build_flow`, saying whether it is new or the live parent
        holding its dedupe key (the HTTP API answers 201 or 200 from it).

        Raises:
            EngineUnavailable: the engine cannot be reached.
        """
        engine = await self.connect()
        res = await engine.enqueue_flow(nodes)
        if not res.created:
            return Enqueued(self._own(await engine.get_job(res.id)), created=False)
        return Enqueued(self._own(self._assemble(nodes[0].job, res, self.clock.now())), True)

    async def chain(self, *steps: Mapping[str, Any]) -> Job:
        """Run `steps` one after another; each step reads the previous one's result
        with `(await job.child_values())[0]`. Returns the last step's job.

        A step that fails stops the chain (the later steps fail, `fail_parent`).
        """
        return await self.flow(*_chain(steps))

    async def group(self, items: Sequence[Mapping[str, Any]], *, then: Mapping[str, Any]) -> Job:
        """Run `items` side by side, then the callback `then`, which reads every result
        with `await job.child_values()` (in the order of `items`). Returns the callback's
        job."""
        return await self.flow(then, list(items))

    def flow_sync(self, parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]]) -> Job:
        """`flow` for synchronous code."""
        return self._bridge().run(lambda app: app.flow(parent, children))

    def chain_sync(self, *steps: Mapping[str, Any]) -> Job:
        """`chain` for synchronous code."""
        return self._bridge().run(lambda app: app.chain(*steps))

    def group_sync(self, items: Sequence[Mapping[str, Any]], *, then: Mapping[str, Any]) -> Job:
        """`group` for synchronous code."""
        return self._bridge().run(lambda app: app.group(items, then=then))

    # --- reading a flow ------------------------------------------------------------------
    async def children_results(self, job_id: str) -> dict[str, ChildResult]:
        """The finished children of `job_id` that count for it, by id, in the order they
        were given: completed ones, and `ignore` ones that failed (with the error).
        A `continue` child's failure is left out.

        Raises:
            JobNotFound: no job has that id.
        """
        engine = await self.connect()
        links = await engine.flow_links(job_id)
        out: dict[str, ChildResult] = {}
        for kid in links.children:
            job = await engine.get_job(kid)
            child = await engine.flow_links(kid)
            if job.state.value not in ("completed", "failed", "cancelled"):
                continue
            if not counted_in_results(job.state, child.policy or DEFAULT_FLOW_POLICY):
                continue
            error = job.last_error.message if job.last_error else None
            out[kid] = ChildResult(kid, job.task, job.state, job.result,
                                   None if job.state is JobState.COMPLETED else error)  # fmt: skip
        return out

    async def child_values(self, job_id: str) -> list[Any]:
        """What each counted child returned, in order (None for an `ignore` failure)."""
        return [c.result for c in (await self.children_results(job_id)).values()]

    async def flow_links(self, job_id: str) -> FlowLinks:
        """The job's parent (and its policy there) and its children's ids.

        Raises:
            JobNotFound: no job has that id.
        """
        return await (await self.connect()).flow_links(job_id)

    async def flow_summary(self, job_id: str) -> dict[str, Any] | None:
        """The job's parent and children (each id, task, state) for `conveyor job`, or
        None when the job is not part of a flow. At most `MAX_TREE_NODES` children are
        read (`children_total` says how many there are).

        Raises:
            JobNotFound: no job has that id.
        """
        engine = await self.connect()
        links = await engine.flow_links(job_id)
        if links.parent_id is None and not links.children:
            return None

        async def brief(kid: str) -> dict[str, Any]:
            job = await engine.get_job(kid)
            return {"id": job.id, "task": job.task, "state": job.state.value}

        return {
            "parent": await brief(links.parent_id) if links.parent_id else None,
            "policy": links.policy,
            "children": [await brief(k) for k in links.children[:MAX_TREE_NODES]],
            "children_total": len(links.children),
        }

    def children_results_sync(self, job_id: str) -> dict[str, ChildResult]:
        """`children_results` for synchronous code."""
        return self._bridge().run(lambda app: app.children_results(job_id))

    def child_values_sync(self, job_id: str) -> list[Any]:
        """`child_values` for synchronous code."""
        return self._bridge().run(lambda app: app.child_values(job_id))

    async def flow_tree(self, job_id: str) -> dict[str, Any]:
        """The whole flow `job_id` belongs to, from its root: each node's id, task,
        state, policy and children (at most `MAX_TREE_NODES` nodes are read; a cut tree
        says `truncated`).

        Raises:
            JobNotFound: no job has that id.
        """
        engine = await self.connect()
        links = await engine.flow_links(job_id)
        root = links
        while root.parent_id is not None:
            root = await engine.flow_links(root.parent_id)
        budget = [MAX_TREE_NODES]

        async def node(links_: Any) -> dict[str, Any]:
            budget[0] -= 1
            job = await engine.get_job(links_.job_id)
            kids: list[dict[str, Any]] = []
            truncated = False
            for kid in links_.children:
                if budget[0] <= 0:
                    truncated = True
                    break
                kids.append(await node(await engine.flow_links(kid)))
            out = {
                "id": job.id,
                "queue": job.queue,
                "task": job.task,
                "state": job.state.value,
                "tenant": job.tenant,
                "policy": links_.policy,
                "children": kids,
            }
            if truncated:
                out["truncated"] = True
            return out

        return await node(root)


def _chain(steps: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], list[Any]]:
    """chain(a, b, c) as a flow: c is the parent of b, b the parent of a."""
    if len(steps) < 2:
        raise InvalidJob("a chain needs at least two steps: use enqueue for one job")
    tree: dict[str, Any] | None = None
    for step in steps[:-1]:
        if not isinstance(step, Mapping):
            raise InvalidJob("each chain step must be a mapping with 'task'")
        if "children" in step:
            raise InvalidJob("a chain step has no 'children': use flow() for a tree")
        item = dict(step)
        if tree is not None:
            item["children"] = [tree]
        tree = item
    return steps[-1], [tree]
