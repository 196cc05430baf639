"""The one-hop pickup, as every engine that hands jobs to idle workers gives it
(`engines.base.HandsOff`: Redis, Postgres): an idle worker is handed a new job, claimed
for it, with the wake-up; everything a rule could hold back still goes through pending;
`stop_handoffs` gives back what was handed; reporting outcomes keeps a worker registered.

What only one engine has (Redis's BLPOP inbox, Postgres's liveness keys, `waiting` rows,
transactional enqueue, notification size) stays in test_redis_pickup.py and
test_postgres_pickup.py. Real servers, separate engines standing for separate
processes: `worker` accepts handed jobs, `producer` enqueues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.engines import Engine, open_engine
from conveyor.engines.base import HandsOff, Outcome
from conveyor.job import JobState
from conveyor.limits import QueueLimits

from .handoffs import go_idle, handed, new


@pytest.fixture(params=["redis", "postgresql"])
def handoff_url(request: pytest.FixtureRequest) -> str:
    """A fresh place on each engine that hands jobs over (a key prefix, a schema)."""
    fixture = "postgres_url" if request.param == "postgresql" else "redis_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
async def worker(handoff_url: str) -> AsyncIterator[Engine]:
    eng = open_engine(handoff_url)
    await eng.connect()
    assert isinstance(eng, HandsOff)
    eng.accept_handoffs("w1")
    yield eng
    await eng.close()


@pytest.fixture
async def producer(handoff_url: str) -> AsyncIterator[Engine]:
    eng = open_engine(handoff_url)
    await eng.connect()
    yield eng
    await eng.close()


async def test_an_idle_worker_is_handed_the_new_job_claimed_for_it(
    worker: Engine, producer: Engine
) -> None:
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    assert res.created and res.state is JobState.RUNNING  # claimed in the enqueue
    [job] = await handed(worker)
    assert (job.id, job.state, job.attempt, job.worker) == (res.id, JobState.RUNNING, 1, "w1")
    stored = await producer.get_job(res.id)
    assert (stored.state, stored.token, stored.attempt) == (JobState.RUNNING, job.token, 1)
    assert stored.started_at is not None and stored.worker == "w1"
    events = await producer.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
    assert [e.kind for e in events][-2:] == ["enqueued", "started"]
    # It is an ordinary claim: a wrong token is fenced off, the right one completes it.
    fenced = await worker.exchange(
        [Outcome(job.id, "h-not-the-token", "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert fenced.lost == [job.id]
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    assert (await producer.get_job(res.id)).state is JobState.COMPLETED


@pytest.mark.parametrize(
    "case",
    ["concurrency limit", "rate limit", "tenant job", "batch", "paused", "not accepted", "delayed"],
)
async def test_what_a_rule_could_hold_back_goes_through_pending(
    worker: Engine, producer: Engine, case: str
) -> None:
    assert isinstance(worker, HandsOff)
    worker_id = "w2" if case == "not accepted" else "w1"  # w2 never called accept_handoffs
    await go_idle(worker, worker_id)
    # Rules set after the worker registered hold as well: the enqueue checks them.
    if case == "concurrency limit":
        await producer.set_limits("q", QueueLimits(concurrency=5))
    elif case == "rate limit":
        await producer.set_limits("q", QueueLimits(rate=100, rate_window_ms=1000))
    elif case == "paused":
        await producer.pause("q")
    if case == "tenant job":
        jobs = [new(tenant="acme")]
    elif case == "batch":
        jobs = [new(), new()]
    elif case == "delayed":
        jobs = [new(delay_ms=60_000)]
    else:
        jobs = [new()]
    results = await producer.enqueue(jobs)
    want = JobState.SCHEDULED if case == "delayed" else JobState.PENDING
    assert [r.state for r in results] == [want] * len(jobs)
    await asyncio.sleep(0.1)
    assert worker.take_handed(worker_id) == []


async def test_stop_handoffs_gives_back_what_was_handed_and_ends_the_handing(
    worker: Engine, producer: Engine
) -> None:
    assert isinstance(worker, HandsOff)
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    # Whether the worker's side received it yet or not, it comes back.
    back = await worker.stop_handoffs("w1")
    assert [j.id for j in back] == [res.id]
    [later] = await producer.enqueue([new()])
    assert later.state is JobState.PENDING


async def test_reporting_outcomes_keeps_an_idle_worker_registered(
    worker: Engine, producer: Engine
) -> None:
    """An idle worker reports a finished job (an exchange with limit 0) and stays idle:
    the next job is still handed to it, not left to a wake-up and a second claim."""
    await go_idle(worker, limit=1)
    [first] = await producer.enqueue([new()])
    [job] = await handed(worker)
    await go_idle(worker, limit=1)  # the claim loop's next claim finds nothing: registered
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    [second] = await producer.enqueue([new()])
    assert second.state is JobState.RUNNING
    assert [j.id for j in await handed(worker)] == [second.id]
    assert first.id == job.id
