"""The engine contract, operator actions: pause, retry, cancel, promote, clean, purge,
and the counts they move. Every test runs on memory, SQLite and Redis (conftest.py).
"""

from __future__ import annotations

import pytest

from conveyor import Conveyor, InvalidState, JobNotFound, JobState
from conveyor.clock import FakeClock
from conveyor.engines import Engine, Outcome

from .helpers import claim, err, finish, settled_events

STATES = ("scheduled", "pending", "running", "completed", "failed", "cancelled")


async def test_paused_queue_keeps_jobs_pending(engine: Engine, app: Conveyor) -> None:
    await engine.pause("q")
    await engine.enqueue([app.build("t", {})])
    assert await claim(engine) == []
    counts = await engine.counts("q")
    assert counts.paused and counts.pending == 1 and counts.oldest_pending_ms is not None
    await engine.resume("q")
    assert len(await claim(engine)) == 1
    assert not (await engine.counts("q")).paused


async def test_operator_retry_cancel_promote(engine: Engine, app: Conveyor) -> None:
    a, b, c = (
        app.build("t", {}, max_attempts=1),
        app.build("t", {}),
        app.build("t", {}, delay=3600),
    )
    await engine.enqueue([a, b, c])
    [ja] = await claim(engine, 1)
    await finish(engine, Outcome(ja.id, str(ja.token), "fail", error_json=err(1)))
    retried = await engine.retry_job(a.id)
    assert retried.state == JobState.PENDING and retried.attempt == 0
    assert len(retried.errors) == 1  # history is kept
    with pytest.raises(InvalidState, match="pending"):
        await engine.retry_job(a.id)
    cancelled = await engine.cancel_job(b.id)
    assert cancelled.state == JobState.CANCELLED
    with pytest.raises(InvalidState):
        await engine.cancel_job(b.id)
    promoted = await engine.promote_job(c.id)
    assert promoted.state == JobState.PENDING
    with pytest.raises(InvalidState, match="scheduled"):
        await engine.promote_job(c.id)
    assert {j.id for j in await claim(engine)} == {a.id, c.id}


async def test_cancel_running_job_fences_its_worker(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await engine.cancel_job(job.id)
    assert await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1")) == [
        job.id
    ]
    assert (await engine.get_job(job.id)).state == JobState.CANCELLED


async def test_retry_all_clean_and_purge(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {"i": i}, max_attempts=1) for i in range(5)])
    for job in await claim(engine, 5):
        kind = "fail" if job.payload["i"] < 3 else "complete"
        await finish(
            engine,
            Outcome(
                job.id,
                str(job.token),
                kind,  # type: ignore[arg-type]
                error_json=err(1),
                result_json="1",
            ),
        )
    counts = await engine.counts("q")
    assert (counts.failed, counts.failed_1m, counts.completed_1m) == (3, 3, 2)
    assert await engine.retry_all("q") == 3
    counts = await engine.counts("q")
    assert (counts.failed, counts.pending, counts.completed) == (0, 3, 2)
    assert await engine.clean("q", JobState.COMPLETED, older_than_ms=3_600_000, limit=100) == 0
    assert await engine.clean("q", JobState.COMPLETED, older_than_ms=0, limit=1) == 1
    assert (await engine.counts("q")).completed == 1
    assert await engine.purge("q") == 4
    counts = await engine.counts("q")
    assert (counts.pending, counts.completed) == (0, 0)


async def transitions(engine: Engine, app: Conveyor, *, retry_ms: int) -> None:
    """Six pending jobs and one scheduled; then complete, fail, retry (after `retry_ms`)
    and cancel one claimed job each: leaves 2 scheduled, 2 pending, 1 of each end state."""
    await engine.enqueue(
        [app.build("t", {}) for _ in range(6)] + [app.build("t", {}, delay=retry_ms / 1000)]
    )
    j0, j1, j2, j3 = await claim(engine, 4)
    await finish(
        engine,
        Outcome(j0.id, str(j0.token), "complete", result_json="1"),
        Outcome(j1.id, str(j1.token), "fail", error_json=None),
        Outcome(j2.id, str(j2.token), "retry", delay_ms=retry_ms),
    )
    await engine.cancel_job(j3.id)


async def test_counts_stay_exact_through_every_transition(engine: Engine, app: Conveyor) -> None:
    await transitions(engine, app, retry_ms=3_600_000)
    counts = (await engine.counts("q")).to_dict()
    assert [counts[k] for k in STATES] == [2, 2, 0, 1, 1, 1]
    assert counts["oldest_pending_ms"] is not None
    assert (counts["completed_1m"], counts["failed_1m"]) == (1, 1)
    assert await engine.purge("q") == 7
    assert (await engine.counts("q")).to_dict() == {
        "queue": "q", "scheduled": 0, "pending": 0, "running": 0, "completed": 0,
        "failed": 0, "cancelled": 0, "waiting-children": 0, "paused": False,
        "oldest_pending_ms": None, "completed_1m": 0, "failed_1m": 0,
    }  # fmt: skip


async def test_counts_age_and_last_minute_follow_the_engine_clock(
    clocked: Engine, clock: FakeClock, app: Conveyor
) -> None:
    await transitions(clocked, app, retry_ms=1_000)
    counts = await clocked.counts("q")
    assert counts.oldest_pending_ms == clock.now_ms()  # when the oldest pending job was queued
    assert (counts.completed_1m, counts.failed_1m) == (1, 1)
    clock.advance(61)  # the finishes slide out of the last minute; the totals stay
    later = await clocked.counts("q")
    assert (later.completed_1m, later.failed_1m, later.completed, later.failed) == (0, 0, 1, 1)


async def test_operator_actions_on_an_unknown_id_raise_not_found(engine: Engine) -> None:
    for action in (engine.get_job, engine.retry_job, engine.cancel_job, engine.promote_job):
        with pytest.raises(JobNotFound, match="no job"):
            await action("q:doesnotexist")


@pytest.mark.parametrize("way_out", ["fail", "cancel", "purge", "clean"])
async def test_every_way_out_of_the_live_states_frees_the_dedupe_key(
    engine: Engine, app: Conveyor, way_out: str
) -> None:
    """A dedupe key is held while its job is live, whatever ends it (completion is in
    test_flow.py): a new enqueue with the key then creates a job."""
    [held] = await engine.enqueue([app.build("t", {}, dedupe_key="k", max_attempts=1)])
    if way_out == "cancel":
        await engine.cancel_job(held.id)
    elif way_out == "purge":
        assert await engine.purge("q") == 1
    else:
        [job] = await claim(engine)
        await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=err(1)))
        if way_out == "clean":
            assert await engine.clean("q", JobState.FAILED, older_than_ms=0, limit=10) == 1
    [again] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert again.created and again.id != held.id


async def test_operator_actions_record_events(engine: Engine, app: Conveyor) -> None:
    """Operator actions are state changes too: each appends its event (what live views
    and `app.events()` consumers see); pause and resume move no job and add none."""
    a, b, c = app.build("t", {}, max_attempts=1), app.build("t", {}), app.build("t", {}, delay=60)
    start = await engine.last_event_ids(["q"])
    await engine.enqueue([a, b, c])
    [job] = await claim(engine, 1)
    await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=err(1)))
    await engine.retry_job(a.id)
    await engine.cancel_job(b.id)
    await engine.promote_job(c.id)
    await engine.retry_all("q", JobState.CANCELLED)
    await engine.pause("q")
    await engine.resume("q")
    events = await settled_events(engine, start, 9)
    name = {a.id: "a", b.id: "b", c.id: "c"}
    assert [(e.kind, name[e.job_id]) for e in events] == [
        ("enqueued", "a"), ("enqueued", "b"), ("enqueued", "c"), ("started", "a"),
        ("failed", "a"), ("enqueued", "a"), ("cancelled", "b"), ("promoted", "c"),
        ("enqueued", "b"),
    ]  # fmt: skip
    assert "error" in events[4].data
    assert "retried_by" in events[5].data and "retried_by" in events[8].data


async def test_the_last_minute_counts_exclude_a_finish_exactly_60_s_ago(
    clocked: Engine, clock: FakeClock, app: Conveyor
) -> None:
    await clocked.enqueue([app.build("t", {})])
    [job] = await claim(clocked)
    await finish(clocked, Outcome(job.id, str(job.token), "complete", result_json="1"))
    clock.advance(59.999)
    assert (await clocked.counts("q")).completed_1m == 1
    clock.advance(0.001)
    assert (await clocked.counts("q")).completed_1m == 0
