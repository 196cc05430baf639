"""Lifecycle rule 7 on every engine: a queue declared with `events=False` has no event
log (nothing is written for enqueue, start, outcomes or operator actions), while its
neighbours keep theirs, and `job.wait()` still returns (it polls the job)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from conveyor import ConfigError, Conveyor, Job, JobFailed
from conveyor.engines import Outcome
from conveyor.facade.results import POLL_MAX_S
from conveyor.lifecycle import writes_events

from .helpers import LEASE_MS, err, settled_events


@pytest.fixture
async def app(engine_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(engine_url)
    app.limits("quiet", events=False)

    @app.task("hush", queue="quiet")
    async def hush(job: Job) -> Any:
        return job.payload["n"]

    @app.task("shout", queue="loud")
    async def shout(job: Job) -> Any:
        return job.payload["n"]

    await app.connect()
    yield app
    await app.close()


async def test_a_queue_without_events_writes_none_and_its_neighbour_all(app: Conveyor) -> None:
    engine = app.engine
    queues = ("quiet", "loud")
    start = await engine.last_event_ids(list(queues))
    ok, bad, gone = [await app.enqueue("hush", {"n": i}) for i in range(3)]
    loud = await app.enqueue("shout", {"n": 9})
    result = asyncio.create_task(ok.wait(timeout=30))
    failure = asyncio.create_task(bad.wait(timeout=30))
    await app.cancel_job(gone.id)
    claimed = (
        await engine.exchange([], queues=queues, limit=10, worker_id="w1", lease_ms=LEASE_MS)
    ).jobs
    by_id = {j.id: j for j in claimed}
    assert set(by_id) == {ok.id, bad.id, loud.id}
    outcomes = [
        Outcome(ok.id, str(by_id[ok.id].token), "complete", result_json="7"),
        Outcome(bad.id, str(by_id[bad.id].token), "fail", error_json=err(1)),
        Outcome(loud.id, str(by_id[loud.id].token), "complete", result_json="9"),
    ]
    await engine.exchange(outcomes, queues=queues, limit=0, worker_id="w1", lease_ms=LEASE_MS)
    # The waiters poll: each sees its job's end within the longest poll interval.
    assert await asyncio.wait_for(result, POLL_MAX_S * 4 + 5) == 7
    with pytest.raises(JobFailed):
        await asyncio.wait_for(failure, POLL_MAX_S * 4 + 5)
    events = await settled_events(engine, start, 3, queues)
    assert [(e.queue, e.kind) for e in events] == [
        ("loud", "enqueued"),
        ("loud", "started"),
        ("loud", "completed"),
    ]
    assert (await engine.counts("quiet")).completed == 1  # the jobs themselves are kept


async def test_wait_on_a_quiet_queue_times_out_with_the_usual_error(app: Conveyor) -> None:
    job = await app.enqueue("hush", {"n": 1})
    with pytest.raises(TimeoutError, match=r"not finished after 0\.3s"):
        await job.wait(timeout=0.3)


async def test_wait_sync_polls_a_quiet_queue_too(app: Conveyor, engine_url: str) -> None:
    """`wait_sync` runs on the app's sync bridge (a sibling app with its own engine):
    that engine writes no events for the queue either, and its waiter polls."""
    if engine_url.startswith("memory://"):
        pytest.skip("memory://: the sync bridge has its own private database")
    start = await app.engine.last_event_ids(["quiet"])
    job = await asyncio.to_thread(app.enqueue_sync, "hush", {"n": 5})
    waiter = asyncio.create_task(asyncio.to_thread(job.wait_sync, 30))
    claimed = (
        await app.engine.exchange([], queues=("quiet",), limit=1, worker_id="w1", lease_ms=LEASE_MS)
    ).jobs
    done = Outcome(job.id, str(claimed[0].token), "complete", result_json="5")
    await app.engine.exchange([done], queues=("quiet",), limit=0, worker_id="w1", lease_ms=LEASE_MS)
    assert await asyncio.wait_for(waiter, POLL_MAX_S * 4 + 5) == 5
    assert await app.engine.read_events(["quiet"], since=start, count=10, block_ms=0) == []


def test_events_takes_a_bool() -> None:
    app = Conveyor("memory://")
    with pytest.raises(ConfigError, match="events='no' is invalid"):
        app.limits("q", events="no")  # type: ignore[arg-type]
    assert "q" not in app.unstreamed


def test_the_partitions_of_a_quiet_queue_are_quiet() -> None:
    app = Conveyor("memory://")
    app.limits("busy", partitions=4, events=False)
    assert not writes_events("busy~3of4", app.unstreamed)
    assert writes_events("busy2~0of4", app.unstreamed) and writes_events("other", app.unstreamed)


async def test_a_queue_declared_quiet_after_connecting_is_quiet_at_once(app: Conveyor) -> None:
    """The rule holds for a queue declared after the engine connected and its sessions
    were in use (Postgres: every open pooled session is told at its next checkout), and
    a queue declared loud again writes events again."""
    engine = app.engine
    queues = ("late", "loud")
    for _ in range(3):  # the engine's open sessions have all run statements
        await app.enqueue("shout", {"n": 0})
    start = await engine.last_event_ids(list(queues))
    app.limits("late", events=False)
    quiet = [await app.enqueue("shout", {"n": i}, queue="late") for i in range(3)]
    claimed = (
        await engine.exchange([], queues=("late",), limit=10, worker_id="w1", lease_ms=LEASE_MS)
    ).jobs
    assert {j.id for j in claimed} == {j.id for j in quiet}
    done = [Outcome(j.id, str(j.token), "complete", result_json="1") for j in claimed]
    await engine.exchange(done, queues=("late",), limit=0, worker_id="w1", lease_ms=LEASE_MS)
    app.limits("late", events=True)
    loud = await app.enqueue("shout", {"n": 4}, queue="late")
    events = await settled_events(engine, start, 1, queues)
    assert [(e.queue, e.kind, e.job_id) for e in events] == [("late", "enqueued", loud.id)]
