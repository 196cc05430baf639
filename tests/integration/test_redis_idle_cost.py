"""What an idle Redis worker costs, and what its cheap look must still do (issue 15,
point 8: a worker on 50 empty queues costs Redis <= 100 commands/s while idle).

An idle worker registered for the one-hop pickup looks at its queues with one
`idle_look` script call (3 commands per queue) instead of a full exchange per queue
(~15): pickup.py `_idle_look`. These tests hold the count (on a private redis-server,
from INFO commandstats, no timing) and, with a fake clock, everything the full exchange
did that no wake-up announces: the registration stays alive, due scheduled jobs start,
a dead worker's expired lease is recovered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from conveyor.clock import FakeClock
from conveyor.engines.base import Exchange
from conveyor.engines.redis import RedisEngine
from conveyor.engines.redis.pickup import WAIT_MS
from conveyor.job import JobState, NewJob, new_job_id
from conveyor.testing import eventually
from tests.conftest import RedisServer

QUEUES = [f"idle{i:02d}" for i in range(50)]


def new(queue: str, **kwargs: object) -> NewJob:
    fields: dict[str, object] = {"task": "t", "payload_json": "{}", "max_attempts": 3}
    fields.update(kwargs)
    return NewJob(id=new_job_id(queue), queue=queue, **fields)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def worker(private_redis: RedisServer, clock: FakeClock) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine(private_redis.url, clock=clock)
    await eng.connect()
    eng.accept_handoffs("w1")
    yield eng
    await eng.stop_handoffs("w1")
    await eng.close()


@pytest.fixture
async def producer(private_redis: RedisServer, clock: FakeClock) -> AsyncIterator[RedisEngine]:
    eng = RedisEngine(private_redis.url, clock=clock)
    await eng.connect()
    yield eng
    await eng.close()


async def look(engine: RedisEngine) -> Exchange:
    """An idle worker's periodic claim over all its queues."""
    return await engine.exchange([], queues=QUEUES, limit=10, worker_id="w1", lease_ms=30_000)


async def commands(server: RedisServer) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (then resets)."""
    r = aioredis.Redis.from_url(server.url)
    try:
        stats = await r.info("commandstats")
        await r.config_resetstat()
    finally:
        await r.aclose()
    return {
        k.removeprefix("cmdstat_"): int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_") not in ("info", "config|resetstat")
    }


async def test_an_idle_look_at_50_queues_is_one_script_call(
    worker: RedisEngine, private_redis: RedisServer, clock: FakeClock
) -> None:
    """The first look registers the worker everywhere (full exchanges); the next ones,
    with nothing woken and nothing due, are one EVALSHA of 3 commands per queue."""
    await look(worker)  # registers on all 50
    clock.advance(5)
    await look(worker)  # loads idle_look.lua (a NOSCRIPT, then SCRIPT LOAD)
    await commands(private_redis)
    for _ in range(3):
        clock.advance(5)
        assert (await look(worker)).jobs == []
    calls = await commands(private_redis)
    assert calls.get("evalsha", 0) == 3, calls
    # 3 per queue and look (ZADD, 2 ZRANGE), plus the reader's BLPOPs: generous bound,
    # far below the ~15 per queue of a full exchange (2,250 for these 3 looks).
    assert sum(calls.values()) <= 3 * (3 * len(QUEUES) + 1) + 20, calls


async def test_the_look_keeps_the_registration_alive(
    worker: RedisEngine, producer: RedisEngine, clock: FakeClock
) -> None:
    """Renewed by every look: long after WAIT_MS from the first registration, a new job
    is still handed to the idle worker (claimed for it at once)."""
    await look(worker)
    for _ in range(4):  # 4 looks, WAIT_MS / 3 apart: 4/3 WAIT_MS in all
        clock.advance(WAIT_MS / 3000)
        await look(worker)
    [res] = await producer.enqueue([new("idle07")])
    assert res.state is JobState.RUNNING


async def test_a_scheduled_job_that_falls_due_starts_on_the_next_look(
    worker: RedisEngine, producer: RedisEngine, clock: FakeClock
) -> None:
    await look(worker)
    [res] = await producer.enqueue([new("idle12", delay_ms=3_000)])
    got = await look(worker)
    assert got.jobs == [] and got.next_due_ms == 3_000  # the look reports when
    clock.advance(3)
    got = await look(worker)
    assert [j.id for j in got.jobs] == [res.id]


async def test_a_dead_workers_expired_lease_is_recovered_by_the_look(
    worker: RedisEngine, producer: RedisEngine, clock: FakeClock
) -> None:
    [res] = await producer.enqueue([new("idle30")])
    dead = await producer.exchange(  # a worker that claims it and dies
        [], queues=["idle30"], limit=1, worker_id="dead", lease_ms=1_000
    )
    assert [j.id for j in dead.jobs] == [res.id]
    await look(worker)
    clock.advance(2)
    got = await look(worker)
    assert got.recovered == 1
    assert [j.id for j in got.jobs] == [res.id]  # recovered, then claimed at once


async def test_after_a_handoff_the_next_exchange_registers_again_at_once(
    worker: RedisEngine, producer: RedisEngine, private_redis: RedisServer
) -> None:
    """The handing enqueue popped the registration: the worker's next exchange on that
    queue is the full one that registers again (no idle look first, a round trip that
    would only report the registration gone), and the next job is handed too."""
    await look(worker)
    [first] = await producer.enqueue([new("idle05")])
    assert first.state is JobState.RUNNING  # handed

    async def arrived() -> bool:
        await worker.wait_for_jobs(QUEUES, 0.2)
        return [j.id for j in worker.take_handed("w1")] == [first.id]

    await eventually(arrived, timeout=5, message="the handed job")
    await commands(private_redis)
    await worker.exchange([], queues=["idle05"], limit=10, worker_id="w1", lease_ms=30_000)
    assert (await commands(private_redis)).get("evalsha") == 1  # the full exchange only
    [second] = await producer.enqueue([new("idle05")])
    assert second.state is JobState.RUNNING
