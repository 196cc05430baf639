"""Flows through the app, with real workers (in-process, burst) on every engine: a
parent reads its children's results, a chain passes each result on, a group's callback
gets every result, and the sync twins store the same flows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import Conveyor, InvalidJob, Job, JobState, Worker

Q = "flows"


def flow_app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task("add", queue=Q)
    async def add(job: Job) -> Any:
        return job.payload.get("n", 0) + sum(v or 0 for v in await job.child_values())

    @app.task("upper", queue=Q)
    def upper(job: Job) -> Any:  # a sync handler reads the results too (the sync twin)
        return str(job.child_values_sync()[0]).upper() if job.payload.get("chained") else "a"

    @app.task("collect", queue=Q)
    async def collect(job: Job) -> Any:
        results = await job.children_results()
        return {"values": await job.child_values(),
                "states": [r.state.value for r in results.values()]}  # fmt: skip

    @app.task("boom", queue=Q, max_attempts=1)
    async def boom(job: Job) -> Any:
        raise ValueError("boom")

    return app


@pytest.fixture
async def app(engine_url: str) -> AsyncIterator[Conveyor]:
    app = flow_app(engine_url)
    await app.connect()
    yield app
    await app.close()


async def run(app: Conveyor) -> None:
    """Burst workers until the queue has nothing left to run (a released parent is
    claimable only after the acknowledgement that released it)."""
    for _ in range(10):
        await Worker(app, queues=[Q], burst=True, concurrency=4).run()
        if not (await app.counts(Q)).pending:
            return
    raise AssertionError("the flow never drained")


async def test_parent_reads_nested_children_results(app: Conveyor) -> None:
    parent = await app.flow({"task": "add", "payload": {"n": 1}}, [
        {"task": "add", "payload": {"n": 2}},
        {"task": "add", "payload": {"n": 3}, "children": [{"task": "add", "payload": {"n": 10}}]},
    ])  # fmt: skip
    assert parent.state is JobState.WAITING
    await run(app)
    assert await parent.wait(5) == 16  # 1 + 2 + (3 + 10)


async def test_chain_passes_each_result_on(app: Conveyor) -> None:
    last = await app.chain(
        {"task": "add", "payload": {"n": 1}},
        {"task": "add", "payload": {"n": 2}},
        {"task": "add", "payload": {"n": 4}},
    )
    await run(app)
    assert await last.wait(5) == 7


async def test_group_callback_gets_every_result_and_ignored_failures(app: Conveyor) -> None:
    items: list[dict[str, Any]] = [{"task": "add", "payload": {"n": n}} for n in (5, 6, 7)]
    done = await app.group([*items, {"task": "boom", "on_failure": "ignore"}],
                           then={"task": "collect"})  # fmt: skip
    await run(app)
    assert await done.wait(5) == {
        "values": [5, 6, 7, None],
        "states": ["completed", "completed", "completed", "failed"],
    }


async def test_a_failing_step_fails_the_rest_of_the_chain(app: Conveyor) -> None:
    last = await app.chain({"task": "boom"}, {"task": "add"}, {"task": "add"})
    await run(app)
    job = await app.get_job(last.id)
    assert job.state is JobState.FAILED and job.errors[-1].type == "ChildFailed"
    middle = (await app.flow_links(last.id)).children[0]
    assert (await app.get_job(middle)).state is JobState.FAILED


async def test_bad_chains_and_groups_are_refused(app: Conveyor) -> None:
    with pytest.raises(InvalidJob, match="at least two steps"):
        await app.chain({"task": "add"})
    with pytest.raises(InvalidJob, match="at least one child"):
        await app.group([], then={"task": "collect"})
    assert await app.queue_names() == []


async def test_a_sync_handler_reads_the_previous_step(app: Conveyor, engine_url: str) -> None:
    if engine_url == "memory://":
        pytest.skip("a sync handler reads through the sync bridge's own engine: memory:// "
                    "is private to each engine object")  # fmt: skip
    last = await app.chain({"task": "upper"}, {"task": "upper", "payload": {"chained": 1}})
    await run(app)
    assert await last.wait(5) == "A"


def test_sync_twins_store_flows(engine_url: str) -> None:
    app = flow_app(engine_url)
    try:
        parent = app.flow_sync({"task": "add"}, [{"task": "add", "payload": {"n": 1}}])
        chain = app.chain_sync({"task": "upper"}, {"task": "upper", "payload": {"chained": 1}})
        group = app.group_sync([{"task": "add"}], then={"task": "collect"})
        for job in (parent, chain, group):
            assert job.state is JobState.WAITING
        assert app.get_job_sync(parent.id).state is JobState.WAITING
    finally:
        asyncio.run(app.close())
