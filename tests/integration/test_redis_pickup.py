"""The one-hop pickup on Redis (engines/redis/pickup.py, lua/_pickup.lua), what only Redis
has: the worker's BLPOP inbox, a refused BLPOP, a handed job never lost. What every engine
that hands jobs over gives (the hand-off, the rules that hold it back, stop_handoffs) is in
test_handoffs.py.

Real Redis (the shared test server, a prefix per test), two engines standing for two
processes: `worker` accepts handed jobs, `producer` enqueues.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from conveyor.engines.redis import RedisEngine
from conveyor.job import JobState
from conveyor.testing import eventually

from .handoffs import go_idle, new


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
