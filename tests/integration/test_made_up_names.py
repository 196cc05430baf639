"""Made-up job ids and queue names do not grow the process (issue 12 item 7).

A job id names its queue (`<queue>:<suffix>`), so every GET /jobs/<id> with a made-up
id, and every count or listing of a made-up queue, hands the engine a name chosen by
the caller. The Redis engine used to keep a key layout for each of them (~6 KB per
request, never freed). Now only the hot path's queues are kept, in a bounded LRU.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import AsyncIterator

import pytest

from conveyor import Conveyor
from conveyor.engines.redis import RedisEngine, connection
from conveyor.engines.redis.keys import LruCache
from conveyor.errors import JobNotFound
from conveyor.job import JobState

pytestmark = pytest.mark.redis

ROUNDS = 300


@pytest.fixture
async def app(redis_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(redis_url)
    await app.connect()
    yield app
    await app.close()


def _engine(app: Conveyor) -> RedisEngine:
    engine = app.engine
    assert isinstance(engine, RedisEngine)
    return engine


async def _made_up_reads(app: Conveyor, n: int) -> None:
    for _ in range(n):
        name = f"q{uuid.uuid4().hex}"
        with pytest.raises(JobNotFound):
            await app.get_job(f"{name}:{uuid.uuid4().hex}")
        await app.counts(name)
        await app.list_jobs(name, JobState.COMPLETED, tenant="acme")
        await app.list_jobs(name, JobState.PENDING)


async def test_reads_of_made_up_names_cache_nothing(app: Conveyor) -> None:
    engine = _engine(app)
    await app.enqueue("work", {}, queue="real")  # the hot path's own queue is kept
    before = len(engine._queue_args)
    await _made_up_reads(app, 50)
    assert len(engine._queue_args) == before
    assert "real" in engine._queue_args


async def test_memory_stays_flat_under_made_up_names(app: Conveyor) -> None:
    await _made_up_reads(app, 30)  # warm up: pools, script objects, interned strings
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        await _made_up_reads(app, ROUNDS)
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Before the fix this grew by ~6 KB per made-up name (~1.8 MB here); what is left is
    # allocator noise, independent of ROUNDS.
    assert end - start < 150 * 1024, f"grew {end - start} bytes over {ROUNDS} made-up names"


async def test_the_hot_path_cache_is_bounded(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(app)
    engine._queue_args = LruCache(8)
    engine._known_queues = LruCache(8)
    monkeypatch.setattr(connection, "QUEUE_CACHE_MAX", 8)
    for i in range(20):  # enqueue creates real queues: kept, but only the last 8
        await app.enqueue("work", {}, queue=f"real{i}")
    assert len(engine._queue_args) == 8
    assert len(engine._known_queues) == 8
    assert "real19" in engine._queue_args and "real0" not in engine._queue_args
    # A queue dropped from the cache still works (built afresh, SADDed again).
    await app.enqueue("work", {}, queue="real0")
    assert (await app.counts("real0")).pending == 2
    assert "real0" in await app.queue_names()


def test_lru_cache_drops_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache and len(cache) == 2


async def test_made_up_names_write_nothing_to_redis(app: Conveyor) -> None:
    engine = _engine(app)
    await app.enqueue("work", {}, queue="real", tenant="acme")
    await app.list_jobs("real", JobState.COMPLETED, tenant="acme")
    before = sorted([k async for k in engine._client.scan_iter(match=f"*{engine.prefix}*")])
    await _made_up_reads(app, 20)
    assert sorted([k async for k in engine._client.scan_iter(match=f"*{engine.prefix}*")]) == before
