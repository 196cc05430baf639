"""The engine contract, flows (lifecycle rule 6): a parent waits in `waiting-children`
until its children have finished; a child's finish reaches its parent in the child's own
atomic step. Every test runs on every engine (conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import Conveyor, InvalidJob, JobState
from conveyor.clock import FakeClock
from conveyor.engines import Engine, Outcome

from .helpers import claim, complete, err, finish, settled_events

W = JobState.WAITING


def tree(app: Conveyor, kids: list[dict[str, Any]], **parent: Any) -> Any:
    return app.build_flow({"task": "t", **parent}, kids)


async def state(engine: Engine, job_id: str) -> JobState:
    return (await engine.get_job(job_id)).state


async def test_flow_is_stored_whole_and_parent_waits(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [{"task": "t"}, {"task": "t", "children": [{"task": "t"}]}])
    res = await engine.enqueue_flow(nodes)
    assert res.created and res.id == nodes[0].job.id and res.state is W
    assert [await state(engine, n.job.id) for n in nodes] == [W, JobState.PENDING, W,
                                                              JobState.PENDING]  # fmt: skip
    counts = await engine.counts("q")
    assert counts.waiting == 2 and counts.pending == 2
    links = await engine.flow_links(nodes[0].job.id)
    assert links.parent_id is None and links.children == (nodes[1].job.id, nodes[2].job.id)
    kid = await engine.flow_links(nodes[3].job.id)
    assert kid.parent_id == nodes[2].job.id and kid.policy == "fail_parent"


async def test_last_child_releases_parent_in_its_own_step(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])
    nodes = tree(app, [{"task": "t"}, {"task": "t"}])
    await engine.enqueue_flow(nodes)
    first = await claim(engine, 1)
    assert {j.id for j in first} <= {nodes[1].job.id, nodes[2].job.id}
    await complete(engine, *first)
    assert await state(engine, nodes[0].job.id) is W
    second = await claim(engine, 5)
    assert [j.id for j in second] != [nodes[0].job.id] and len(second) == 1  # parent waits
    await complete(engine, *second)
    assert await state(engine, nodes[0].job.id) is JobState.PENDING
    [parent] = await claim(engine, 5)
    assert parent.id == nodes[0].job.id
    # 3 enqueued, 2 started + 2 completed children, ready, started
    events = await settled_events(engine, start, 9)
    assert [e.kind for e in events if e.job_id == parent.id][:3] == ["enqueued", "ready",
                                                                    "started"]  # fmt: skip


async def test_nested_flow_runs_bottom_up(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [{"task": "t", "children": [{"task": "t", "children": [{"task": "t"}]}]}])
    await engine.enqueue_flow(nodes)
    order = []
    while jobs := await claim(engine, 5):
        assert len(jobs) == 1
        order.append(jobs[0].id)
        await complete(engine, *jobs)
    assert order == [n.job.id for n in reversed(nodes)]
    assert all([await state(engine, n.job.id) is JobState.COMPLETED for n in nodes])


async def test_fail_parent_fails_parent_and_cancels_the_rest(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [
        {"task": "t", "max_attempts": 1},
        {"task": "t", "priority": -5},
        {"task": "t", "priority": -9, "children": [{"task": "t", "priority": -10}]},
    ])  # fmt: skip
    await engine.enqueue_flow(nodes)
    [bad, running] = await claim(engine, 2)
    assert bad.id == nodes[1].job.id
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    parent = await engine.get_job(nodes[0].job.id)
    assert parent.state is JobState.FAILED
    assert parent.errors[-1].type == "ChildFailed" and bad.id in parent.errors[-1].message
    for n in nodes[2:]:
        assert await state(engine, n.job.id) is JobState.CANCELLED
    # the sibling that was running lost its lease: its outcome changes nothing
    assert await complete(engine, running) == [running.id]
    assert await claim(engine, 5) == []
    assert (await engine.counts("q")).waiting == 0


async def test_a_failure_in_the_same_step_as_the_last_completion_fails_the_parent(
    engine: Engine, app: Conveyor
) -> None:
    nodes = tree(app, [{"task": "t"}, {"task": "t", "max_attempts": 1}])
    await engine.enqueue_flow(nodes)
    jobs = {j.id: j for j in await claim(engine, 2)}
    ok, bad = jobs[nodes[1].job.id], jobs[nodes[2].job.id]
    await finish(
        engine,
        Outcome(ok.id, str(ok.token), "complete", result_json="1"),
        Outcome(bad.id, str(bad.token), "fail", error_json=err(1)),
    )
    assert await state(engine, nodes[0].job.id) is JobState.FAILED
    assert await claim(engine, 5) == []


@pytest.mark.parametrize("policy", ["ignore", "continue"])
async def test_ignore_and_continue_let_parent_run(
    engine: Engine, app: Conveyor, policy: str
) -> None:
    nodes = tree(app, [{"task": "t", "max_attempts": 1, "on_failure": policy}, {"task": "t"}])
    await engine.enqueue_flow(nodes)
    [a, b] = await claim(engine, 2)
    await finish(engine, Outcome(a.id, str(a.token), "fail", error_json=err(1)))
    assert await state(engine, nodes[0].job.id) is W
    await complete(engine, b)
    assert await state(engine, nodes[0].job.id) is JobState.PENDING


async def test_children_results_by_policy(engine_url: str) -> None:
    app = Conveyor(engine_url)
    engine = await app.connect()
    try:
        parent = await app.flow({"task": "t", "queue": "q"}, [
            {"task": "t", "queue": "q", "payload": {"n": 1}},
            {"task": "t", "queue": "q", "max_attempts": 1, "on_failure": "ignore"},
            {"task": "t", "queue": "q", "max_attempts": 1, "on_failure": "continue"},
        ])  # fmt: skip
        assert parent.state is W
        jobs = await claim(engine, 3)
        ok, ign, cont = sorted(jobs, key=lambda j: j.created_at or 0)
        by_id = {j.id: j for j in jobs}
        links = await engine.flow_links(parent.id)
        ok, ign, cont = (by_id[k] for k in links.children)
        await finish(
            engine,
            Outcome(ok.id, str(ok.token), "complete", result_json='{"v": 7}'),
            Outcome(ign.id, str(ign.token), "fail", error_json=err(1, "bad ignore")),
            Outcome(cont.id, str(cont.token), "fail", error_json=err(1, "bad continue")),
        )
        results = await app.children_results(parent.id)
        assert list(results) == [ok.id, ign.id]
        assert results[ok.id].result == {"v": 7} and results[ok.id].error is None
        assert results[ign.id].state is JobState.FAILED and results[ign.id].error == "bad ignore"
        assert await app.child_values(parent.id) == [{"v": 7}, None]
        assert (await app.get_job(parent.id)).state is JobState.PENDING
    finally:
        await app.close()


async def test_lost_last_attempt_of_child_fails_parent(
    clocked: Engine, app: Conveyor, clock: FakeClock
) -> None:
    nodes = tree(app, [{"task": "t", "max_attempts": 1}])
    await clocked.enqueue_flow(nodes)
    assert len(await claim(clocked, 1, lease_ms=1000)) == 1
    clock.advance(2)
    assert await clocked.recover_expired(["q"]) == 1
    assert await state(clocked, nodes[1].job.id) is JobState.FAILED
    assert await state(clocked, nodes[0].job.id) is JobState.FAILED


async def test_cancel_parent_cancels_unfinished_descendants(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [{"task": "t"}, {"task": "t", "priority": -1, "children": [{"task": "t"}]}])
    await engine.enqueue_flow(nodes)
    [done] = await claim(engine, 1)
    await complete(engine, done)
    cancelled = await engine.cancel_job(nodes[0].job.id)
    assert cancelled.state is JobState.CANCELLED
    assert await state(engine, done.id) is JobState.COMPLETED  # finished: left alone
    for n in nodes[2:]:
        assert await state(engine, n.job.id) is JobState.CANCELLED
    assert await claim(engine, 5) == []


async def test_retrying_failed_child_rearms_failed_parent(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [{"task": "t", "max_attempts": 1}, {"task": "t", "priority": -1}])
    await engine.enqueue_flow(nodes)
    [bad] = await claim(engine, 1)
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    assert await state(engine, nodes[0].job.id) is JobState.FAILED
    await engine.retry_job(bad.id)
    assert await state(engine, nodes[0].job.id) is W
    assert await state(engine, nodes[2].job.id) is JobState.PENDING  # cancelled sibling back
    jobs = await claim(engine, 5)
    assert {j.id for j in jobs} == {bad.id, nodes[2].job.id}
    await complete(engine, *jobs)
    [parent] = await claim(engine, 5)
    assert parent.id == nodes[0].job.id


async def test_root_dedupe_key_makes_flow_idempotent(engine: Engine, app: Conveyor) -> None:
    first = await engine.enqueue_flow(tree(app, [{"task": "t"}], dedupe_key="order-1"))
    again = await engine.enqueue_flow(tree(app, [{"task": "t"}, {"task": "t"}],
                                           dedupe_key="order-1"))  # fmt: skip
    assert not again.created and again.id == first.id and again.state is W
    counts = await engine.counts("q")
    assert counts.waiting == 1 and counts.pending == 1  # nothing of the retry was written


async def test_waiting_parent_holds_its_dedupe_key(engine: Engine, app: Conveyor) -> None:
    first = await engine.enqueue_flow(tree(app, [{"task": "t"}], dedupe_key="order-1"))
    [res] = await engine.enqueue([app.build("t", {}, dedupe_key="order-1")])
    assert not res.created and res.id == first.id


@pytest.mark.parametrize(
    ("kids", "parent", "match"),
    [
        ([{"task": "t", "queue": "other"}], {}, "one queue"),
        ([{"task": "t", "dedupe_key": "k"}], {}, "dedupe_key goes on the flow's parent"),
        ([{"task": "t", "on_failure": "explode"}], {}, "on_failure"),
        ([{"task": "t"}], {"delay": 5}, "children have finished"),
        ([{"payload": {}}], {}, "has no 'task'"),
        ([], {}, "at least one child"),
    ],
)
async def test_bad_flow_is_refused_and_stores_nothing(
    engine: Engine, app: Conveyor, kids: list[dict[str, Any]], parent: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidJob, match=match):
        tree(app, kids, **parent)
    assert await engine.queue_names() == []


async def test_purge_removes_a_whole_flow(engine: Engine, app: Conveyor) -> None:
    nodes = tree(app, [{"task": "t", "children": [{"task": "t"}]}, {"task": "t"}])
    await engine.enqueue_flow(nodes)
    assert await engine.purge("q") == 4
    counts = await engine.counts("q")
    assert (counts.waiting, counts.pending) == (0, 0)
    assert await claim(engine, 5) == []


async def test_a_failure_at_the_bottom_of_the_deepest_chain_fails_every_level(
    engine: Engine, app: Conveyor
) -> None:
    steps = [{"task": "t", "max_attempts": 1}] * 101  # MAX_FLOW_DEPTH levels below the last
    last = await engine.enqueue_flow(app.build_flow(steps[-1], [_chain_of(steps[:-1])]))
    [first] = await claim(engine, 5)
    await finish(engine, Outcome(first.id, str(first.token), "fail", error_json=err(1)))
    assert await state(engine, last.id) is JobState.FAILED
    assert (await engine.counts("q")).failed == 101
    with pytest.raises(InvalidJob, match="at most 100 levels"):
        app.build_flow(steps[-1], [_chain_of(steps)])


def _chain_of(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """steps[0] at the bottom, each later step the parent of the one before."""
    item: dict[str, Any] = dict(steps[0])
    for step in steps[1:]:
        item = {**step, "children": [item]}
    return item


async def test_rearm_leaves_a_parent_whose_key_another_job_took(
    engine: Engine, app: Conveyor
) -> None:
    nodes = tree(app, [{"task": "t", "max_attempts": 1}], dedupe_key="k")
    await engine.enqueue_flow(nodes)
    [bad] = await claim(engine, 1)
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    [taker] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])  # the key is free
    assert taker.created
    await engine.retry_job(bad.id)  # the child is retried; its parent cannot wait again
    assert await state(engine, bad.id) is JobState.PENDING
    assert await state(engine, nodes[0].job.id) is JobState.FAILED


async def test_rearmed_child_keeps_its_due_time(
    clocked: Engine, clock: FakeClock, app: Conveyor
) -> None:
    """A delayed child cancelled by its parent's failure comes back at its own due time:
    scheduled while that is still ahead, pending once it has passed."""
    kids = [{"task": "t", "max_attempts": 1}, {"task": "t", "delay": 60},
            {"task": "t", "delay": 1}]  # fmt: skip
    nodes = tree(app, kids)
    await clocked.enqueue_flow(nodes)
    due_at = (await clocked.get_job(nodes[2].job.id)).scheduled_at
    [bad] = await claim(clocked, 5)
    await finish(clocked, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    assert await state(clocked, nodes[2].job.id) is JobState.CANCELLED
    clock.advance(2)
    await clocked.retry_job(bad.id)
    late, due = await clocked.get_job(nodes[2].job.id), await clocked.get_job(nodes[3].job.id)
    assert late.state is JobState.SCHEDULED and due.state is JobState.PENDING
    assert due_at is not None and late.scheduled_at == due_at and due.scheduled_at is None
    assert {j.id for j in await claim(clocked, 5)} == {bad.id, due.id}


async def test_retrying_a_failed_parent_waits_for_its_children_again(
    engine: Engine, app: Conveyor
) -> None:
    """An operator retry of a parent that a child failed: the parent waits again, the
    child that failed it and the children its failure cancelled come back."""
    nodes = tree(app, [{"task": "t", "max_attempts": 1}, {"task": "t", "priority": -1}])
    await engine.enqueue_flow(nodes)
    [bad] = await claim(engine, 1)
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    assert await state(engine, nodes[0].job.id) is JobState.FAILED
    await engine.retry_job(nodes[0].job.id)
    assert [await state(engine, n.job.id) for n in nodes] == [W, JobState.PENDING,
                                                              JobState.PENDING]  # fmt: skip
    jobs = await claim(engine, 5)
    assert {j.id for j in jobs} == {bad.id, nodes[2].job.id}  # not the parent
    await complete(engine, *jobs)
    [parent] = await claim(engine, 5)
    assert parent.id == nodes[0].job.id


async def test_retrying_a_parent_whose_children_all_completed_makes_it_pending(
    engine: Engine, app: Conveyor
) -> None:
    nodes = tree(app, [{"task": "t"}], max_attempts=1)
    await engine.enqueue_flow(nodes)
    await complete(engine, *await claim(engine, 1))
    [parent] = await claim(engine, 1)
    await finish(engine, Outcome(parent.id, str(parent.token), "fail", error_json=err(1)))
    await engine.retry_job(parent.id)
    assert await state(engine, parent.id) is JobState.PENDING
    assert await state(engine, nodes[1].job.id) is JobState.COMPLETED


async def test_retrying_a_failed_root_rearms_every_failed_level_below(
    engine: Engine, app: Conveyor
) -> None:
    nodes = tree(app, [{"task": "t", "children": [{"task": "t", "max_attempts": 1}]}])
    await engine.enqueue_flow(nodes)
    [bad] = await claim(engine, 1)
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    assert await state(engine, nodes[0].job.id) is JobState.FAILED
    await engine.retry_job(nodes[0].job.id)
    assert [await state(engine, n.job.id) for n in nodes] == [W, W, JobState.PENDING]
    for n in reversed(nodes):
        [job] = await claim(engine, 5)
        assert job.id == n.job.id
        await complete(engine, job)


async def test_retry_all_rearms_a_failed_flow_once(engine: Engine, app: Conveyor) -> None:
    """The failed list holds the parent and the child that failed it: whichever is retried
    first re-arms the flow, and the other, live by then, is left as it is."""
    nodes = tree(app, [{"task": "t", "max_attempts": 1}, {"task": "t", "priority": -1}])
    await engine.enqueue_flow(nodes)
    [bad] = await claim(engine, 1)
    await finish(engine, Outcome(bad.id, str(bad.token), "fail", error_json=err(1)))
    assert await engine.retry_all("q") == 1
    assert [await state(engine, n.job.id) for n in nodes] == [W, JobState.PENDING,
                                                              JobState.PENDING]  # fmt: skip
    jobs = await claim(engine, 5)
    assert {j.id for j in jobs} == {bad.id, nodes[2].job.id}
