"""Issue 14 item 1: `job.wait()` on every engine, driven by the engine's events.

Waiters start before a worker (in this process, burst mode) finishes the jobs, so what
wakes them is the event, not the first look.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from conveyor import Conveyor, Job, JobCancelled, JobFailed, JobNotFound, Worker
from conveyor.facade.results import LOOKUP_LANES
from conveyor.testing import eventually
from tests.apps.probe import PROBE_QUEUE, probe_app
from tests.conftest import SpawnWorker


@pytest.fixture
async def app(engine_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(engine_url)

    @app.task("double", queue="w")
    async def double(job: Job) -> Any:
        return {"twice": job.payload["n"] * 2}

    @app.task("boom", queue="w", max_attempts=1)
    async def boom(job: Job) -> Any:
        raise ValueError(f"cannot handle {job.payload['n']}")

    await app.connect()
    yield app
    await app.close()


async def _burst(app: Conveyor) -> None:
    await asyncio.wait_for(Worker(app, queues=("w",), burst=True, health_port=0).run(), 30)


async def _waiting(app: Conveyor, n: int) -> None:
    async def ready() -> bool:
        return app._results is not None and app._results.waiting >= n

    await eventually(ready, message=f"{n} waiters registered")


async def test_wait_returns_the_result(app: Conveyor) -> None:
    job = await app.enqueue("double", {"n": 21})
    waiter = asyncio.create_task(job.wait(timeout=30))
    await _waiting(app, 1)
    await _burst(app)
    assert await waiter == {"twice": 42}
    assert await job.wait(timeout=1) == {"twice": 42}  # already finished: at once


async def test_wait_raises_job_failed_with_the_error_and_traceback(app: Conveyor) -> None:
    job = await app.enqueue("boom", {"n": 7})
    waiter = asyncio.create_task(app.wait(job.id, timeout=30))
    await _waiting(app, 1)
    await _burst(app)
    with pytest.raises(JobFailed, match="ValueError: cannot handle 7") as caught:
        await waiter
    assert caught.value.error_type == "ValueError"
    assert "raise ValueError" in (caught.value.traceback or "")
    assert caught.value.job.id == job.id


async def test_wait_raises_job_cancelled(app: Conveyor) -> None:
    job = await app.enqueue("double", {"n": 1}, delay=3600)
    waiter = asyncio.create_task(job.wait(timeout=30))
    await _waiting(app, 1)
    await app.cancel_job(job.id)
    with pytest.raises(JobCancelled):
        await waiter


async def test_wait_times_out_and_leaves_nothing_behind(app: Conveyor) -> None:
    job = await app.enqueue("double", {"n": 1})
    with pytest.raises(TimeoutError, match=r"not finished after 0\.2s"):
        await job.wait(timeout=0.2)
    assert app._results is not None and app._results.waiting == 0
    with pytest.raises(JobNotFound):
        await app.wait("w:nosuchjob", timeout=1)


async def test_waiters_on_several_queues_share_one_reader(app: Conveyor) -> None:
    @app.task("other", queue="w2")
    async def other(job: Job) -> Any:
        return "other"

    first = await app.enqueue("double", {"n": 1})
    second = await app.enqueue("other", {})
    waiters = [asyncio.create_task(first.wait(30)), asyncio.create_task(second.wait(30))]
    await _waiting(app, 2)
    await asyncio.wait_for(Worker(app, queues=("w", "w2"), burst=True, health_port=0).run(), 30)
    assert await asyncio.gather(*waiters) == [{"twice": 2}, "other"]


def test_wait_sync(engine_url: str) -> None:
    if engine_url == "memory://":
        pytest.skip("the sync bridge opens its own engine: memory:// is private to it")
    app = Conveyor(engine_url)

    @app.task("double", queue="w")
    async def double(job: Job) -> Any:
        return {"twice": job.payload["n"] * 2}

    job = app.enqueue_sync("double", {"n": 2})
    with pytest.raises(TimeoutError):
        job.wait_sync(timeout=0.2)
    asyncio.run(_burst_and_close(app))
    try:
        assert job.wait_sync(timeout=10) == {"twice": 4}
        assert app.wait_sync(job.id, timeout=10) == {"twice": 4}
    finally:
        asyncio.run(app.close())


async def _burst_and_close(app: Conveyor) -> None:
    await _burst(app)
    await app.close()


@pytest.mark.redis
async def test_a_thousand_waiters_add_no_connections(redis_url: str) -> None:
    """1,000 concurrent waiters: the engine's connection count does not grow with them,
    and while they wait the reader makes one blocking read, not one per waiter."""
    app = Conveyor(redis_url)

    @app.task("double", queue="w")
    async def double(job: Job) -> Any:
        return job.payload["n"] * 2

    admin = redis.Redis.from_url(redis_url.split("?")[0])
    try:
        async with app:
            jobs = await app.enqueue_many(
                [{"task": "double", "payload": {"n": n}} for n in range(1000)]
            )
            before = int(admin.info("clients")["connected_clients"])
            waiters = [asyncio.create_task(job.wait(timeout=60)) for job in jobs]
            await _waiting(app, 1000)
            during = int(admin.info("clients")["connected_clients"])
            # the reader's blocking read, and the lanes of the waiters' first looks
            assert during - before <= 1 + LOOKUP_LANES, (before, during)
            assert app._results is not None
            # one blocking read at a time (a new one each second), never one per waiter
            assert app._results.reads < 100
            await _burst(app)
            assert await asyncio.gather(*waiters) == [n * 2 for n in range(1000)]
            # reads follow batches of events (3 per job), never one per waiter
            assert app._results.reads < 1000
    finally:
        admin.close()


async def test_wait_sees_a_worker_in_another_process(
    durable_url: str, spawn_worker: SpawnWorker
) -> None:
    """The event that ends the wait comes from a `conveyor worker` process."""
    app = probe_app(durable_url)
    async with app:
        ok = await app.enqueue("probe", {"action": "ok"})
        bad = await app.enqueue("probe", {"action": "unrecoverable", "message": "nope"})
        waiters = [asyncio.create_task(ok.wait(60)), asyncio.create_task(bad.wait(60))]
        await _waiting(app, 2)
        spawn_worker(durable_url, queues=PROBE_QUEUE)
        assert await waiters[0] == {"action": "ok", "attempt": 1}
        with pytest.raises(JobFailed, match="Unrecoverable: nope"):
            await waiters[1]
