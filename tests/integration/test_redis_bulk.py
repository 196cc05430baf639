"""A big enqueue_many on Redis is cut into bounded script calls (issue 13, item 5), and
what it promises across them holds. Real redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from conveyor import Conveyor, EngineFull, EngineUnavailable, JobState
from conveyor.engines.redis.bulk import ENQUEUE_CHUNK as BULK_BATCH
from conveyor.engines.redis.bulk import bulk_waves
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis
HALF = BULK_BATCH // 2  # a last, partial chunk


def app_on(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task("a.job", queue="a")
    async def a_job(job: Any) -> None: ...

    @app.task("b.job", queue="b")
    async def b_job(job: Any) -> None: ...

    return app


def items(n_a: int, n_b: int) -> list[dict[str, Any]]:
    return [{"task": "a.job", "payload": {"i": i}} for i in range(n_a)] + [
        {"task": "b.job", "payload": {"i": i}} for i in range(n_b)
    ]


def evalsha_calls(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_waves_hold_at_most_a_batch_per_queue() -> None:
    waves = bulk_waves({"a": list(range(2_500)), "b": [2_500]}, 1_000)
    assert [[(q, len(ix)) for q, ix in wave] for wave in waves] == [
        [("a", 1_000), ("b", 1)],
        [("a", 1_000)],
        [("a", 500)],
    ]


async def test_bulk_enqueue_is_cut_into_bounded_script_calls(private_redis: RedisServer) -> None:
    app = app_on(private_redis.url)
    await app.connect()
    before = evalsha_calls(private_redis.port)
    jobs = await app.enqueue_many(items(2 * BULK_BATCH + HALF, 10))
    # Three calls for queue a (250 + 250 + 125), one for b: none longer than a chunk.
    assert evalsha_calls(private_redis.port) - before == 4
    assert [j.state for j in jobs] == [JobState.PENDING] * (2 * BULK_BATCH + HALF + 10)
    counts = await app.counts("a")
    assert counts.pending == 2 * BULK_BATCH + HALF
    page = await app.list_jobs("a", JobState.PENDING, limit=3 * BULK_BATCH)
    assert [j.payload["i"] for j in page.jobs] == list(range(2 * BULK_BATCH + HALF)), "in order"
    await app.close()


@pytest.mark.parametrize("seam", ["lane", "pipeline"])
async def test_a_failed_wave_leaves_a_prefix_of_whole_chunks_per_queue(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, seam: str
) -> None:
    """What the README promises when a bulk enqueue fails midway: the call raises, and
    per queue the jobs stored are the first chunks, whole, in input order. `lane`: the
    plain lane, which writes wave k+1 as soon as wave k succeeded; `pipeline`: the
    wave-by-wave path of the other connections (Cluster, Sentinel, TLS, replicas)."""
    app = app_on(private_redis.url)
    engine = await app.connect()
    waves = 0

    def failing_second(real: Any) -> Any:
        async def second_wave_fails(*args: Any, **kwargs: Any) -> Any:
            nonlocal waves
            waves += 1
            if waves == 2:
                raise RedisConnectionError("connection lost in the second wave")
            return await real(*args, **kwargs)

        return second_wave_fails

    if seam == "lane":
        monkeypatch.setattr(engine._lane, "start", failing_second(engine._lane.start))
    else:
        monkeypatch.setattr(engine, "_lane", None)  # redis-py's pipeline, wave by wave
        monkeypatch.setattr(engine, "_run_many", failing_second(engine._run_many))
    with pytest.raises(EngineUnavailable, match="second wave"):
        await app.enqueue_many(items(2 * BULK_BATCH + HALF, 10))
    monkeypatch.undo()
    page = await app.list_jobs("a", JobState.PENDING, limit=3 * BULK_BATCH)
    assert [j.payload["i"] for j in page.jobs] == list(range(BULK_BATCH)), "chunk 1 of a"
    assert (await app.counts("b")).pending == 10, "b's only chunk went in wave 1"
    assert waves == 2, "nothing was sent after the failed wave"
    await app.close()


async def test_an_error_reply_stops_the_waves_after_it(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wave refused by Redis (here: out of memory from its second wave on) raises
    before the next wave is written: what is stored is the waves before it, whole."""
    app = app_on(private_redis.url)
    engine = await app.connect()
    admin = redis.Redis(port=private_redis.port)
    real_start = engine._lane.start
    starts = 0

    async def full_from_the_second(*args: Any, **kwargs: Any) -> Any:
        nonlocal starts
        starts += 1
        if starts == 2:
            admin.config_set("maxmemory", 1)  # noeviction: every write is refused
        return await real_start(*args, **kwargs)

    monkeypatch.setattr(engine._lane, "start", full_from_the_second)
    try:
        with pytest.raises(EngineFull):
            await app.enqueue_many(items(3 * BULK_BATCH, 0))
    finally:
        admin.config_set("maxmemory", 0)
    assert starts == 2, "the third wave was never written"
    page = await app.list_jobs("a", JobState.PENDING, limit=3 * BULK_BATCH)
    assert [j.payload["i"] for j in page.jobs] == list(range(BULK_BATCH)), "wave 1 only"
    await app.close()


async def test_each_chunk_takes_the_layout_its_jobs_allow(private_redis: RedisServer) -> None:
    """A chunk whose jobs differ only in id and payload goes in layout 2 (shared values
    once); a chunk with any job that differs, or with a dedupe key, in layout 11. Both
    store every job as given."""
    app = app_on(private_redis.url)
    plain = [{"task": "a.job", "payload": {"i": i}} for i in range(BULK_BATCH)]
    shared = [
        {"task": "a.job", "payload": {"i": i}, "tenant": "t", "priority": 2, "timeout": 5}
        for i in range(HALF)
    ]
    mixed = [{"task": "a.job", "payload": {"i": i}, "delay": i % 2 * 60} for i in range(HALF)]
    deduped = [{"task": "a.job", "payload": {"i": i}, "dedupe_key": f"k{i}"} for i in range(3)]
    jobs = await app.enqueue_many([*plain, *shared, *mixed, *deduped])
    stored = [await app.get_job(j.id) for j in jobs]
    assert [j.payload for j in stored] == [
        it["payload"] for it in [*plain, *shared, *mixed, *deduped]
    ]
    assert [j.state for j in jobs] == [j.state for j in stored]
    assert {(j.tenant, j.priority, j.timeout) for j in stored[BULK_BATCH : BULK_BATCH + HALF]} == {
        ("t", 2, 5)
    }
    assert [j.state for j in stored[BULK_BATCH + HALF : BULK_BATCH + 2 * HALF]] == [
        JobState.SCHEDULED if i % 2 else JobState.PENDING for i in range(HALF)
    ]
    assert [j.dedupe_key for j in stored[-3:]] == ["k0", "k1", "k2"]
    await app.close()


async def test_a_repeated_call_reports_its_jobs_as_not_created(
    private_redis: RedisServer,
) -> None:
    """A call sent again (its reply was lost) finds its ids stored: each job comes back
    with created=False and its state, in both layouts, and nothing is stored twice."""
    app = app_on(private_redis.url)
    engine = await app.connect()
    new = [app.build("a.job", {"i": i}) for i in range(5)]
    new += [app.build("a.job", {"i": i}, dedupe_key=f"k{i}") for i in range(5, 7)]
    first = await engine.enqueue(new[:5])  # layout 2
    await engine.enqueue(new[5:])  # layout 11
    assert [(r.created, r.state) for r in first] == [(True, JobState.PENDING)] * 5
    await app.cancel_job(new[1].id)
    again = await engine.enqueue(new[:3] + new[5:])
    assert [(r.id, r.created, r.state) for r in again] == [
        (new[0].id, False, JobState.PENDING),
        (new[1].id, False, JobState.CANCELLED),
        (new[2].id, False, JobState.PENDING),
        (new[5].id, False, JobState.PENDING),
        (new[6].id, False, JobState.PENDING),
    ]
    assert (await app.counts("a")).pending == 6
    await app.close()
