"""The one-hop pickup on Redis (engines/redis/pickup.py, lua/_pickup.lua): an idle worker
is handed a new job, claimed for it, in the reply that wakes it; everything a rule could
hold back still goes through pending; a handed job is never lost.

Real Redis (the shared test server, a prefix per test), two engines standing for two
processes: `worker` accepts handed jobs, `producer` enqueues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.engines.base import HandsOff, Outcome
from conveyor.engines.redis import RedisEngine
from conveyor.job import JobState
from conveyor.limits import QueueLimits
from conveyor.testing import eventually

from .handoffs import handed, new


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine(redis_url)
    await eng.connect()
    eng.accept_handoffs("w1")
    yield eng
    await eng.close()


@pytest.fixture
async def producer(redis_url: str) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine(redis_url)
    await eng.connect()
    yield eng
    await eng.close()


async def go_idle(engine: RedisEngine, worker_id: str = "w1", lease_ms: int = 30_000) -> None:
    """An exchange that finds nothing (it registers the worker where it may)."""
    got = await engine.exchange([], queues=["q"], limit=5, worker_id=worker_id, lease_ms=lease_ms)
    assert got.jobs == []


async def test_an_idle_worker_is_handed_the_new_job_claimed_for_it(
    worker: RedisEngine, producer: RedisEngine
) -> None:
    assert isinstance(worker, HandsOff)
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    assert res.created and res.state is JobState.RUNNING  # claimed in the enqueue's script
    [job] = await handed(worker)
    assert (job.id, job.state, job.attempt, job.worker) == (res.id, JobState.RUNNING, 1, "w1")
    stored = await producer.get_job(res.id)
    assert (stored.state, stored.token) == (JobState.RUNNING, job.token)
    assert [
        e.kind for e in await producer.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
    ][-2:] == [
        "enqueued",
        "started",
    ]
    # It is an ordinary claim: the token completes it.
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    assert (await producer.get_job(res.id)).state is JobState.COMPLETED


@pytest.mark.parametrize(
    "case", ["concurrency limit", "rate limit", "tenant job", "batch", "paused", "not accepted"]
)
async def test_what_a_rule_could_hold_back_goes_through_pending(
    worker: RedisEngine, producer: RedisEngine, case: str
) -> None:
    worker_id = "w1"
    if case == "concurrency limit":
        await producer.set_limits("q", QueueLimits(concurrency=5))
    elif case == "rate limit":
        await producer.set_limits("q", QueueLimits(rate=100, rate_window_ms=1000))
    elif case == "paused":
        await producer.pause("q")
    elif case == "not accepted":
        worker_id = "w2"  # never called accept_handoffs
    await go_idle(worker, worker_id)
    if case == "tenant job":
        jobs = [new(tenant="acme")]
    elif case == "batch":
        jobs = [new(), new()]
    else:
        jobs = [new()]
    results = await producer.enqueue(jobs)
    assert [r.state for r in results] == [JobState.PENDING] * len(jobs)
    await asyncio.sleep(0.1)
    assert worker.take_handed(worker_id) == []


async def test_a_job_handed_to_a_worker_that_died_is_recovered(
    redis_url: str, producer: RedisEngine
) -> None:
    doomed = RedisEngine(redis_url)
    await doomed.connect()
    doomed.accept_handoffs("w1")
    await go_idle(doomed, lease_ms=300)
    await doomed.close()  # dies: no stop_handoffs, its registration is still there
    [res] = await producer.enqueue([new()])
    stored = await producer.get_job(res.id)
    assert (stored.state, stored.worker) == (JobState.RUNNING, "w1")
    await asyncio.sleep(0.4)  # its lease expires
    got = await producer.exchange([], queues=["q"], limit=5, worker_id="w2", lease_ms=30_000)
    assert got.recovered == 1
    assert [(j.id, j.worker, j.attempt) for j in got.jobs] == [(res.id, "w2", 2)]


async def test_stop_handoffs_gives_back_what_was_handed_and_ends_the_handing(
    worker: RedisEngine, producer: RedisEngine
) -> None:
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    # Whether the reader already read it or it is still in the inbox, it comes back.
    back = await worker.stop_handoffs("w1")
    assert [j.id for j in back] == [res.id]
    [later] = await producer.enqueue([new()])
    assert later.state is JobState.PENDING


async def test_the_next_exchange_returns_jobs_not_taken_yet(
    worker: RedisEngine, producer: RedisEngine
) -> None:
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    # The worker got busy instead of taking it: its next exchange carries it, unless the
    # reader's BLPOP took it first, and then `take_handed` has it (once its reply is in).
    got = await worker.exchange([], queues=["q"], limit=5, worker_id="w1", lease_ms=30_000)
    ids = [j.id for j in got.jobs]

    async def arrived() -> bool:
        ids.extend(j.id for j in worker.take_handed("w1"))
        return bool(ids)

    await eventually(arrived, timeout=5, message="the handed job")
    assert ids == [res.id]


async def test_a_refused_blpop_falls_back_to_wake_ups(
    worker: RedisEngine, producer: RedisEngine
) -> None:
    """If Redis refuses the BLPOP (a cluster refusing keys of several slots, say), the
    worker stops registering and is woken to take what was handed: nothing is stranded."""
    await go_idle(worker)
    keys = worker._keys.queue("q")
    # A wrong type makes the next BLPOP fail with WRONGTYPE, a refusal like CROSSSLOT.
    await worker._client.set(keys.inbox("w1"), "not a list")

    async def refused() -> bool:
        return bool(worker._pickups["w1"].refused)

    await eventually(refused, timeout=5, message="the reader gives up")
    await worker._client.delete(keys.inbox("w1"))
    # The idle worker was woken; its next exchange drops the registration for good.
    await worker.wait_for_jobs(["q"], 0.01)
    await go_idle(worker)
    assert await worker._client.zcard(keys.waiting) == 0
    [res] = await producer.enqueue([new()])
    assert res.state is JobState.PENDING


async def test_reporting_outcomes_keeps_an_idle_worker_registered(
    worker: RedisEngine, producer: RedisEngine
) -> None:
    """An idle worker reports a finished job (an exchange with limit 0) and stays idle:
    the next job is still handed to it, not left to a wake-up and a second claim."""
    await go_idle(worker)
    [first] = await producer.enqueue([new()])
    [job] = await handed(worker)
    await go_idle(worker)  # the claim loop's next claim finds nothing: registered again
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    [second] = await producer.enqueue([new()])
    assert second.state is JobState.RUNNING
    assert [j.id for j in await handed(worker)] == [second.id]
    assert first.id == job.id
