"""The engine contract: every behaviour, unchanged, against memory, SQLite and Redis.

Time-dependent checks use the engine's own due times and short leases with
`eventually`, never bare sleeps, because Redis decides time with its own clock.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from conveyor import ConfigError, Conveyor, InvalidState, Job, JobNotFound, JobState
from conveyor.engines import Engine, Outcome, open_engine
from conveyor.job import AttemptError
from conveyor.limits import QueueLimits
from conveyor.testing import eventually

LEASE_MS = 30_000


@pytest.fixture
async def engine(engine_url: str) -> AsyncIterator[Engine]:
    eng = open_engine(engine_url)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
def app(engine_url: str) -> Conveyor:
    app = Conveyor(engine_url)

    @app.task("t", queue="q", max_attempts=3)
    async def t(job: object) -> None:  # never run here: the contract drives engines directly
        return None

    return app


async def claim(
    engine: Engine, n: int = 10, queues: tuple[str, ...] = ("q",), lease_ms: int = LEASE_MS
):
    return (
        await engine.exchange([], queues=queues, limit=n, worker_id="w1", lease_ms=lease_ms)
    ).jobs


async def finish(engine: Engine, *outcomes: Outcome) -> list[str]:
    return (
        await engine.exchange(outcomes, queues=("q",), limit=0, worker_id="w1", lease_ms=LEASE_MS)
    ).lost


def err(attempt: int, msg: str = "boom") -> str:
    return AttemptError(attempt, "RuntimeError", msg, "tb", 1.0).to_json()


async def test_enqueue_roundtrips_every_field(engine: Engine, app: Conveyor) -> None:
    new = app.build(
        "t",
        {"to": "a@example.com", "n": [1, 2]},
        priority=5,
        tenant="acme",
        dedupe_key="welcome:42",
        timeout=7.5,
        backoff=[1, 5, 30],
        max_attempts=4,
    )
    [res] = await engine.enqueue([new])
    assert res.created and res.id == new.id and res.state == JobState.PENDING
    job = await engine.get_job(new.id)
    assert (job.queue, job.task, job.state) == ("q", "t", JobState.PENDING)
    assert job.payload == {"to": "a@example.com", "n": [1, 2]}
    assert (job.priority, job.tenant, job.dedupe_key, job.timeout) == (5, "acme", "welcome:42", 7.5)
    assert job.backoff == {"kind": "list", "delays": [1.0, 5.0, 30.0]}
    assert (job.attempt, job.max_attempts) == (0, 4)
    assert job.created_at > 0 and job.errors == []
    assert "q" in await engine.queue_names()


async def test_get_job_unknown_id_raises(engine: Engine) -> None:
    with pytest.raises(JobNotFound, match="no job"):
        await engine.get_job("q:doesnotexist")


async def test_enqueue_many_keeps_order_across_queues(engine: Engine, app: Conveyor) -> None:
    jobs = [app.build("t", {"i": i}, queue="q" if i % 2 else "other") for i in range(20)]
    results = await engine.enqueue(jobs)
    assert [r.id for r in results] == [j.id for j in jobs]
    assert (await engine.counts("q")).pending == 10
    assert (await engine.counts("other")).pending == 10


async def test_dedupe_returns_live_job_and_releases_key_when_finished(
    engine: Engine, app: Conveyor
) -> None:
    first = app.build("t", {"v": 1}, dedupe_key="k")
    second = app.build("t", {"v": 2}, dedupe_key="k")
    r1, r2 = await engine.enqueue([first]), await engine.enqueue([second])
    assert r1[0].created and not r2[0].created and r2[0].id == first.id
    assert (await engine.counts("q")).pending == 1
    [job] = await claim(engine)
    again = await engine.enqueue([app.build("t", {"v": 3}, dedupe_key="k")])
    assert again[0].id == first.id  # still running: deduped
    await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    after = await engine.enqueue([app.build("t", {"v": 4}, dedupe_key="k")])
    assert after[0].created and after[0].id != first.id


async def test_enqueue_is_idempotent_by_job_id(engine: Engine, app: Conveyor) -> None:
    """A relay that retries an enqueue after a crash must not create a second job."""
    new = app.build("t", {"v": 1})
    await engine.enqueue([new])
    [again] = await engine.enqueue([new])
    assert not again.created and again.id == new.id
    assert (await engine.counts("q")).pending == 1


async def test_claims_highest_priority_first_then_fifo(engine: Engine, app: Conveyor) -> None:
    order = [("low1", -5), ("mid1", 0), ("high1", 10), ("mid2", 0), ("high2", 10), ("low2", -5)]
    await engine.enqueue([app.build("t", {"n": n}, priority=p) for n, p in order])
    claimed = [j.payload["n"] for j in await claim(engine, 3)]
    claimed += [j.payload["n"] for j in await claim(engine, 3)]
    assert claimed == ["high1", "high2", "mid1", "mid2", "low1", "low2"]


async def test_claim_counts_attempt_and_sets_lease(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    assert job.state == JobState.RUNNING and job.attempt == 1 and job.token
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.RUNNING and stored.attempt == 1 and stored.worker == "w1"
    assert stored.started_at is not None
    assert await claim(engine) == []  # claimed jobs are not claimed twice


async def test_delayed_job_waits_until_due(engine: Engine, app: Conveyor) -> None:
    [res] = await engine.enqueue([app.build("t", {}, delay=0.4)])
    assert res.state == JobState.SCHEDULED
    ex = await engine.exchange([], queues=("q",), limit=5, worker_id="w", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 0 < ex.next_due_ms <= 400
    job = await engine.get_job(res.id)
    assert job.scheduled_at is not None and 0.35 <= job.scheduled_at - job.created_at <= 0.45
    got: list[object] = []

    async def claimable() -> bool:
        got.extend(await claim(engine))
        return bool(got)

    await eventually(claimable, timeout=5, message="delayed job became claimable")


async def test_run_at_in_past_is_pending_and_future_is_scheduled(
    engine: Engine, app: Conveyor
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    future = datetime.now(UTC) + timedelta(hours=1)
    r = await engine.enqueue([app.build("t", {}, run_at=past), app.build("t", {}, run_at=future)])
    assert [x.state for x in r] == [JobState.PENDING, JobState.SCHEDULED]
    job = await engine.get_job(r[1].id)
    assert job.scheduled_at == pytest.approx(future.timestamp(), abs=0.01)


async def test_complete_stores_result(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    lost = await finish(engine, Outcome(job.id, str(job.token), "complete", result_json='{"ok":1}'))
    assert lost == []
    done = await engine.get_job(job.id)
    assert done.state == JobState.COMPLETED and done.result == {"ok": 1}
    assert done.finished_at is not None and done.token is None
    assert (await engine.counts("q")).completed == 1


async def test_retry_schedules_after_delay_and_records_error(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1), delay_ms=5000))
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.SCHEDULED and stored.attempt == 1
    assert stored.scheduled_at is not None
    # due = the engine's now + 5 s; the engine's now is within a second of ours
    assert stored.scheduled_at - datetime.now(UTC).timestamp() == pytest.approx(5.0, abs=1.0)
    assert [(e.attempt, e.type, e.message) for e in stored.errors] == [(1, "RuntimeError", "boom")]
    assert await claim(engine) == []


async def test_retry_without_delay_is_pending_again(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1), delay_ms=0))
    [again] = await claim(engine)
    assert again.id == job.id and again.attempt == 2 and again.token != job.token


async def test_fail_is_dead_letter_with_every_error(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "retry", error_json=err(1, "a")))
    [job] = await claim(engine)
    await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=err(2, "b")))
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.FAILED
    assert [e.message for e in stored.errors] == ["a", "b"]
    assert (await engine.counts("q")).failed == 1


async def test_release_gives_attempt_back_and_goes_first(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {"n": i}) for i in range(3)])
    first, *_ = await claim(engine, 1)
    await finish(engine, Outcome(first.id, str(first.token), "release"))
    stored = await engine.get_job(first.id)
    assert stored.state == JobState.PENDING and stored.attempt == 0
    [again] = await claim(engine, 1)
    assert again.id == first.id and again.attempt == 1


async def test_wrong_token_changes_nothing(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    lost = await finish(engine, Outcome(job.id, "not-the-token", "complete", result_json="1"))
    assert lost == [job.id]
    assert (await engine.get_job(job.id)).state == JobState.RUNNING
    assert await engine.heartbeat([(job.id, "nope")], lease_ms=LEASE_MS) == [job.id]
    assert await engine.heartbeat([(job.id, str(job.token))], lease_ms=LEASE_MS) == []


async def test_expired_lease_goes_back_to_pending_and_old_holder_is_fenced(
    engine: Engine, app: Conveyor
) -> None:
    await engine.enqueue([app.build("t", {}, max_attempts=3)])
    [job] = await claim(engine, lease_ms=50)

    async def recovered() -> bool:
        await engine.recover_expired(["q"])
        return (await engine.get_job(job.id)).state == JobState.PENDING

    await eventually(recovered, timeout=5, message="expired lease recovered")
    stored = await engine.get_job(job.id)
    assert stored.attempt == 1  # the crashed attempt counts
    [again] = await claim(engine)
    assert again.attempt == 2
    # the first holder comes back from a long pause: it is fenced off
    assert await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1")) == [
        job.id
    ]
    assert (
        await finish(engine, Outcome(again.id, str(again.token), "complete", result_json="2")) == []
    )
    assert (await engine.get_job(job.id)).result == 2


async def test_heartbeat_keeps_lease_alive(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine, lease_ms=300)
    for _ in range(4):
        assert await engine.heartbeat([(job.id, str(job.token))], lease_ms=300) == []
        await asyncio.sleep(0.1)
        await engine.recover_expired(["q"])
    assert (await engine.get_job(job.id)).state == JobState.RUNNING


async def test_crash_loop_ends_failed_with_reason(engine: Engine, app: Conveyor) -> None:
    await engine.enqueue([app.build("t", {}, max_attempts=2)])
    for attempt in (1, 2):
        [job] = await claim(engine, lease_ms=30)
        assert job.attempt == attempt

        async def expired(job_id: str = job.id) -> bool:
            await engine.recover_expired(["q"])
            return (await engine.get_job(job_id)).state != JobState.RUNNING

        await eventually(expired, timeout=5, message="lease expiry")
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.FAILED
    assert stored.last_error is not None and stored.last_error.type == "LeaseExpired"
    assert "worker lost" in stored.last_error.message
    assert stored.dedupe_key is None


async def test_claim_also_recovers_expired_leases(engine: Engine, app: Conveyor) -> None:
    """Running workers recover crashed peers' jobs themselves: no extra process."""
    await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine, lease_ms=30)
    got: list[object] = []

    async def reclaimed() -> bool:
        got.extend(await claim(engine))
        return bool(got)

    await eventually(reclaimed, timeout=5, message="reclaim after expiry")
    assert got[0].id == job.id  # type: ignore[attr-defined]


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


async def test_list_jobs_pages_with_cursor(engine: Engine, app: Conveyor) -> None:
    new = [app.build("t", {"i": i}, tenant="a" if i % 2 else "b") for i in range(7)]
    await engine.enqueue(new)
    seen, cursor = [], None
    while True:
        page = await engine.list_jobs("q", JobState.PENDING, limit=3, cursor=cursor)
        seen += [j.payload["i"] for j in page.jobs]
        cursor = page.cursor
        if cursor is None:
            break
    assert seen == list(range(7))  # pending: claim order
    only_a = await engine.list_jobs("q", JobState.PENDING, tenant="a", limit=10)
    assert [j.payload["i"] for j in only_a.jobs] == [1, 3, 5]
    for job in await claim(engine, 7):
        await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    done = await engine.list_jobs("q", JobState.COMPLETED, limit=10)
    assert len(done.jobs) == 7 and done.cursor is None


async def test_events_record_every_state_change(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])
    [res] = await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await engine.set_progress(job.id, str(job.token), orjson.dumps(50).decode())
    await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    events = await engine.read_events(["q"], since=start, count=100, block_ms=100)
    mine = [e for e in events if e.job_id == res.id]
    assert [e.kind for e in mine] == ["enqueued", "started", "progress", "completed"]
    assert mine[2].data.get("progress") == 50
    assert (await engine.get_job(job.id)).progress_value == 50
    later = await engine.read_events(["q"], since={"q": mine[-1].id}, count=100, block_ms=50)
    assert later == []


async def test_read_events_blocks_until_an_event(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])

    async def produce() -> None:
        await asyncio.sleep(0.1)
        await engine.enqueue([app.build("t", {})])

    producer = asyncio.create_task(produce())
    events = await engine.read_events(["q"], since=start, count=10, block_ms=3000)
    await producer
    assert [e.kind for e in events] == ["enqueued"]


async def test_workers_registry_expires(engine: Engine) -> None:
    await engine.register_worker("w-a", '{"queues": ["q"], "in_flight": 2}', ttl_ms=60_000)
    await engine.register_worker("w-b", '{"queues": ["q"]}', ttl_ms=1)
    await asyncio.sleep(0.05)
    workers = await engine.workers()
    assert [w["id"] for w in workers] == ["w-a"] and workers[0]["in_flight"] == 2
    await engine.unregister_worker("w-a")
    assert await engine.workers() == []


async def test_wait_for_jobs_wakes_on_enqueue(
    engine_url: str, engine: Engine, app: Conveyor
) -> None:
    producer = engine if engine_url == "memory://" else open_engine(engine_url)
    await producer.connect()
    loop = asyncio.get_running_loop()
    assert await claim(engine) == []
    waiter = asyncio.create_task(engine.wait_for_jobs(["q"], timeout=5))
    await asyncio.sleep(0.05)
    t0 = loop.time()
    await producer.enqueue([app.build("t", {})])
    await asyncio.wait_for(waiter, 5)
    assert loop.time() - t0 < 2.0, "woke by the enqueue, not by the timeout"
    if producer is not engine:
        await producer.close()


# --- scheduler primitives: leadership leases, the schedule store, fenced last run -----------
async def test_lease_acquire_renew_release(engine: Engine) -> None:
    assert await engine.lease_info("lead") is None
    assert await engine.acquire_lease("lead", "a", 30_000)
    assert await engine.acquire_lease("lead", "a", 30_000)  # already ours: extended
    assert not await engine.acquire_lease("lead", "b", 30_000)  # a's lease is live
    info = await engine.lease_info("lead")
    assert info is not None and info.holder == "a" and 0 < info.ttl_ms <= 30_000
    assert await engine.renew_lease("lead", "a", 30_000)
    assert not await engine.renew_lease("lead", "b", 30_000)  # compare-and-set
    assert not await engine.release_lease("lead", "b")  # b cannot drop a's lease
    assert (await engine.lease_info("lead")) is not None
    assert await engine.release_lease("lead", "a")
    assert await engine.lease_info("lead") is None
    assert await engine.acquire_lease("lead", "b", 30_000)  # free at once after a release
    assert await engine.acquire_lease("other", "a", 30_000)  # leases are independent


async def test_lease_can_be_taken_after_it_expires_and_the_old_holder_is_fenced(
    engine: Engine,
) -> None:
    assert await engine.acquire_lease("lead", "a", 150)

    async def taken_by_b() -> bool:
        return await engine.acquire_lease("lead", "b", 30_000)

    await eventually(taken_by_b, timeout=5, message="b takes the expired lease")
    assert not await engine.renew_lease("lead", "a", 30_000)  # a learns it lost
    assert not await engine.release_lease("lead", "a")
    info = await engine.lease_info("lead")
    assert info is not None and info.holder == "b"


async def test_schedule_store_crud(engine: Engine) -> None:
    assert await engine.schedules() == []
    await engine.put_schedule("b-sched", '{"v": 1}', "runtime")
    await engine.put_schedule("a-sched", '{"v": 1}', "code")
    [a, b] = await engine.schedules()
    assert (a.name, a.spec_json, a.source, a.paused, a.last_run_ms) == (
        "a-sched", '{"v": 1}', "code", False, None,
    )  # fmt: skip
    assert b.name == "b-sched" and b.source == "runtime" and b.since_ms > 0
    await engine.acquire_lease("scheduler", "me", 30_000)
    assert await engine.advance_schedule("a-sched", 1_000, lease="scheduler", holder="me")
    # an update keeps paused, baseline and last run
    assert await engine.set_schedule_paused("a-sched", True)
    await engine.put_schedule("a-sched", '{"v": 2}', "code")
    [a, _] = await engine.schedules()
    assert (a.spec_json, a.paused, a.since_ms, a.last_run_ms) == (
        '{"v": 2}',
        True,
        a.since_ms,
        1000,
    )
    assert await engine.set_schedule_paused("a-sched", True)  # pausing twice keeps since
    assert (await engine.schedules())[0].since_ms == a.since_ms
    await asyncio.sleep(0.01)
    assert await engine.set_schedule_paused("a-sched", False)  # resume: baseline moves to now
    [a, _] = await engine.schedules()
    assert not a.paused and a.since_ms > b.since_ms
    assert not await engine.set_schedule_paused("missing", True)
    assert await engine.delete_schedule("b-sched")
    assert not await engine.delete_schedule("b-sched")
    assert [s.name for s in await engine.schedules()] == ["a-sched"]


async def test_advance_schedule_is_fenced_by_the_lease_and_monotonic(engine: Engine) -> None:
    await engine.put_schedule("s", "{}", "code")
    # nobody leads: refused
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert await engine.acquire_lease("scheduler", "a", 30_000)
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="b")
    assert await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("s", 1_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("s", 500, lease="scheduler", holder="a")  # never back
    assert await engine.advance_schedule("s", 2_000, lease="scheduler", holder="a")
    assert not await engine.advance_schedule("gone", 3_000, lease="scheduler", holder="a")
    assert await engine.release_lease("scheduler", "a")
    assert await engine.acquire_lease("scheduler", "b", 30_000)
    assert not await engine.advance_schedule("s", 3_000, lease="scheduler", holder="a")  # stale
    assert await engine.advance_schedule("s", 3_000, lease="scheduler", holder="b")
    assert [s.last_run_ms for s in await engine.schedules()] == [3_000]


async def test_throughput_history_counts_finished_jobs_per_minute(
    engine: Engine, app: Conveyor
) -> None:
    await engine.enqueue([app.build("t", {"i": i}, max_attempts=1) for i in range(5)])
    for job in await claim(engine, 5):
        kind = "fail" if job.payload["i"] < 2 else "complete"
        await finish(
            engine,
            Outcome(job.id, str(job.token), kind, error_json=err(1), result_json="1"),  # type: ignore[arg-type]
        )
    history = await engine.throughput_history("q", 60)
    assert len(history.completed) == len(history.failed) == 60
    # Just finished: all in the newest minute, the same figure `counts` calls *_1m.
    assert (history.completed[-1], history.failed[-1]) == (3, 2)
    assert sum(history.completed) == 3 and sum(history.failed) == 2
    counts = await engine.counts("q")
    assert (counts.completed_1m, counts.failed_1m) == (3, 2)
    assert history.end_ms > 0
    # Pending work and unknown queues count nothing.
    await engine.enqueue([app.build("t", {})])
    assert sum((await engine.throughput_history("q", 5)).completed) == 3
    empty = await engine.throughput_history("nope", 3)
    assert (empty.completed, empty.failed) == ([0, 0, 0], [0, 0, 0])


async def test_throughput_history_puts_each_finish_in_its_minute(
    engine_url: str, app: Conveyor
) -> None:
    from conveyor.clock import FakeClock

    clock = FakeClock()
    eng = open_engine(engine_url, clock=clock)
    await eng.connect()
    try:
        await eng.enqueue([app.build("t", {"i": i}, max_attempts=1) for i in range(4)])
        for i, job in enumerate(await claim(eng, 4, lease_ms=3_600_000)):
            kind = "fail" if i == 3 else "complete"
            await finish(
                eng,
                Outcome(job.id, str(job.token), kind, error_json=err(1), result_json="1"),  # type: ignore[arg-type]
            )
            clock.advance(61 if i < 2 else 0)  # finishes at minutes -2, -1, 0 and 0
        history = await eng.throughput_history("q", 5)
        assert history.completed == [0, 0, 1, 1, 1] and history.failed == [0, 0, 0, 0, 1]
        clock.advance(3 * 60)  # the oldest finish slides out of a 5-minute window
        assert (await eng.throughput_history("q", 5)).completed == [1, 1, 0, 0, 0]
    finally:
        await eng.close()


# --- fairness and limits (DESIGN.md guarantee 6) ----------------------------------------------


def tenants_of(jobs: list[Job]) -> collections.Counter[str | None]:
    return collections.Counter(j.tenant for j in jobs)


async def complete(engine: Engine, *jobs: Job) -> list[str]:
    return await finish(
        engine, *(Outcome(j.id, str(j.token), "complete", result_json="1") for j in jobs)
    )


async def test_limits_are_stored_and_cleared(engine: Engine) -> None:
    assert (await engine.get_limits("q")).empty
    limits = QueueLimits.build(
        concurrency=5, tenant_concurrency=2, rate="100/1s", tenant_rate="10/500ms"
    )
    await engine.set_limits("q", limits)
    assert await engine.get_limits("q") == limits
    assert limits.to_dict() == {
        "concurrency": 5,
        "tenant_concurrency": 2,
        "rate": "100/1s",
        "tenant_rate": "10/500ms",
    }
    assert (await engine.get_limits("other")).empty  # per queue
    await engine.set_limits("q", None)
    assert (await engine.get_limits("q")).empty


async def test_queue_concurrency_caps_running_jobs(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits(concurrency=2))
    await engine.enqueue([app.build("t", {"i": i}) for i in range(5)])
    first = await claim(engine, 10)
    assert [j.payload["i"] for j in first] == [0, 1]
    assert await claim(engine, 10) == []  # a second worker gets nothing either
    held = await engine.list_jobs("q", JobState.PENDING, limit=10)
    # Held back by the limit: still pending, no attempt spent, order kept.
    assert [(j.payload["i"], j.attempt) for j in held.jobs] == [(2, 0), (3, 0), (4, 0)]
    await complete(engine, first[0])
    assert [j.payload["i"] for j in await claim(engine, 10)] == [2]
    await engine.set_limits("q", None)
    assert len(await claim(engine, 10)) == 2


async def test_tenant_concurrency_and_jobs_without_tenant(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits(tenant_concurrency=2))
    await engine.enqueue(
        [app.build("t", {}, tenant="a") for _ in range(20)]
        + [app.build("t", {}, tenant="b") for _ in range(3)]
        + [app.build("t", {}) for _ in range(3)]
    )
    got = await claim(engine, 10)
    # Jobs without a tenant belong to no tenant: the tenant limit does not apply to them.
    assert tenants_of(got) == {"a": 2, "b": 2, None: 3}
    assert await engine.tenant_running("q") == {"a": 2, "b": 2}
    assert await claim(engine, 10) == []
    a_job = next(j for j in got if j.tenant == "a")
    await complete(engine, a_job)
    assert await engine.tenant_running("q") == {"a": 1, "b": 2}
    assert tenants_of(await claim(engine, 10)) == {"a": 1}
    counts = await engine.counts("q")
    assert (counts.pending, counts.running, counts.completed) == (18, 7, 1)


async def test_tenants_take_turns(engine: Engine, app: Conveyor) -> None:
    """A tenant with a big backlog cannot delay a small one, even without limits."""
    await engine.enqueue([app.build("t", {"n": i}, tenant="big") for i in range(200)])
    await engine.enqueue(
        [app.build("t", {"n": i}, tenant="small", priority=p) for i, p in enumerate([0, 0, 5])]
    )
    got = await claim(engine, 6)
    assert tenants_of(got) == {"big": 3, "small": 3}
    # Within a tenant: priority first, then FIFO.
    assert [j.payload["n"] for j in got if j.tenant == "small"] == [2, 0, 1]
    assert [j.payload["n"] for j in got if j.tenant == "big"] == [0, 1, 2]
    # Listings keep the queue's priority/FIFO order; counts see every bucket.
    page = await engine.list_jobs("q", JobState.PENDING, limit=3)
    assert [(j.tenant, j.payload["n"]) for j in page.jobs] == [("big", 3), ("big", 4), ("big", 5)]
    only_big = await engine.list_jobs("q", JobState.PENDING, tenant="big", limit=500)
    assert [j.payload["n"] for j in only_big.jobs] == list(range(3, 200))
    counts = await engine.counts("q")
    assert (counts.pending, counts.running) == (197, 6)


async def test_rate_limit_caps_starts_and_says_when_it_reopens(
    engine: Engine, app: Conveyor
) -> None:
    await engine.set_limits("q", QueueLimits.build(rate="3/800ms"))
    await engine.enqueue([app.build("t", {"i": i}) for i in range(5)])
    assert len(await claim(engine, 10)) == 3
    ex = await engine.exchange([], queues=("q",), limit=10, worker_id="w2", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 0 < ex.next_due_ms <= 800
    assert {j.attempt for j in (await engine.list_jobs("q", JobState.PENDING)).jobs} == {0}
    got: list[Job] = []

    async def reopened() -> bool:
        got.extend(await claim(engine, 10))
        return len(got) >= 2

    await eventually(reopened, timeout=5, message="rate window reopened")
    assert len(got) == 2


async def test_tenant_rate_limit(engine: Engine, app: Conveyor) -> None:
    await engine.set_limits("q", QueueLimits.build(tenant_rate="2/10s"))
    await engine.enqueue(
        [app.build("t", {}, tenant=t) for t in ("a", "b") for _ in range(4)] + [app.build("t", {})]
    )
    got = await claim(engine, 20)
    assert tenants_of(got) == {"a": 2, "b": 2, None: 1}
    ex = await engine.exchange([], queues=("q",), limit=10, worker_id="w", lease_ms=LEASE_MS)
    assert ex.jobs == [] and ex.next_due_ms is not None and 9_000 < ex.next_due_ms <= 10_000


async def test_finished_job_wakes_workers_held_back_by_a_limit(
    engine: Engine, app: Conveyor
) -> None:
    await engine.set_limits("q", QueueLimits(concurrency=1))
    await engine.enqueue([app.build("t", {}) for _ in range(2)])
    await engine.wait_for_jobs(["q"], timeout=0.5)  # Redis: subscribe first
    [job] = await claim(engine, 5)
    assert await claim(engine, 5) == []  # held back: this worker goes idle
    waiter = asyncio.create_task(engine.wait_for_jobs(["q"], timeout=10))
    await asyncio.sleep(0.2)
    assert not waiter.done(), "no wake-up while the limit holds"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await complete(engine, job)
    await asyncio.wait_for(waiter, 10)
    assert loop.time() - t0 < 2.0, "woken by the finished job, not by the timeout"
    assert len(await claim(engine, 5)) == 1


async def test_defer_gives_the_attempt_back_without_an_error(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])
    await engine.enqueue([app.build("t", {}, tenant="a")])
    [job] = await claim(engine)
    lost = await finish(
        engine, Outcome(job.id, str(job.token), "defer", delay_ms=60_000, reason="429")
    )
    assert lost == []
    stored = await engine.get_job(job.id)
    assert stored.state == JobState.SCHEDULED and stored.attempt == 0 and stored.errors == []
    assert stored.scheduled_at is not None
    assert stored.scheduled_at - datetime.now(UTC).timestamp() == pytest.approx(60, abs=2)
    assert await engine.tenant_running("q") == {}
    await engine.promote_job(job.id)
    [again] = await claim(engine)
    await finish(engine, Outcome(again.id, str(again.token), "defer", delay_ms=0, reason="x"))
    assert (await engine.get_job(job.id)).state == JobState.PENDING
    events = await engine.read_events(["q"], since=start, count=50, block_ms=50)
    deferred = [e for e in events if e.kind == "deferred"]
    assert [e.data.get("reason") for e in deferred] == ["429", "x"]
    assert deferred[0].data.get("delay_ms") == 60_000


async def test_tenant_jobs_keep_every_operation(engine: Engine, app: Conveyor) -> None:
    """Cancel, fail + retry, release, expiry, promote and purge work on tenant jobs."""
    await engine.set_limits("q", QueueLimits(tenant_concurrency=5))
    a = [app.build("t", {"i": i}, tenant="a", max_attempts=2) for i in range(4)]
    later = app.build("t", {}, tenant="a", delay=3600)
    await engine.enqueue([*a, later])
    await engine.cancel_job(a[0].id)
    j1, j2, j3 = await claim(engine, 3)
    assert [j.id for j in (j1, j2, j3)] == [a[1].id, a[2].id, a[3].id]
    await finish(engine, Outcome(j1.id, str(j1.token), "fail", error_json=err(1)))
    await finish(engine, Outcome(j2.id, str(j2.token), "release"))
    await engine.cancel_job(j3.id)
    assert await engine.tenant_running("q") == {}
    assert await engine.retry_all("q") == 1
    await engine.promote_job(later.id)
    # Released first (front of its bucket), then the retried and the promoted job.
    again = await claim(engine, 5, lease_ms=30)
    assert [j.id for j in again] == [j2.id, j1.id, later.id]
    assert await engine.tenant_running("q") == {"a": 3}

    async def expired() -> bool:
        await engine.recover_expired(["q"])
        return await engine.tenant_running("q") == {}

    await eventually(expired, timeout=5, message="expired tenant leases recovered")
    assert (await engine.counts("q")).pending == 3
    assert await engine.purge("q") == 5
    assert await claim(engine, 5) == []
    await engine.enqueue([app.build("t", {}, tenant="a")])
    assert tenants_of(await claim(engine, 5)) == {"a": 1}


def test_invalid_limits_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="100/1s"):
        QueueLimits.build(rate="fast")
    with pytest.raises(ConfigError, match="concurrency=-1"):
        QueueLimits(concurrency=-1)
    with pytest.raises(ConfigError, match="tenant_rate"):
        QueueLimits.build(tenant_rate="0/1s")
    assert QueueLimits.build(rate="5/250ms").rate_window_ms == 250
    assert QueueLimits.build(rate="100/s").to_dict()["rate"] == "100/1s"
    assert QueueLimits.build(rate="1000/1m").rate_window_ms == 60_000


# --- the lifecycle decisions (conveyor.lifecycle, the README's "Job contract") ------------
# Each rule once differed between engines. An engine that does not follow one yet is
# marked with a strict per-engine xfail naming the decision, so the mark turns into a
# failure the moment the engine is fixed and must be removed with the fix.
def diverges(request: pytest.FixtureRequest, **engines: str) -> None:
    """Mark this test as an expected failure on the named engines (strict)."""
    kind = request.node.callspec.params["engine_url"]
    if kind in engines:
        request.applymarker(pytest.mark.xfail(strict=True, reason=engines[kind]))


async def failed_job(engine: Engine, app: Conveyor, **options: object) -> Job:
    """A job of queue "q" driven to `failed` (claimed, then failed)."""
    [res] = await engine.enqueue([app.build("t", {}, max_attempts=1, **options)])
    [job] = await claim(engine, 1)
    assert job.id == res.id
    await finish(engine, Outcome(job.id, str(job.token), "fail", error_json=err(1)))
    return await engine.get_job(job.id)


async def test_retry_is_refused_while_another_live_job_holds_the_dedupe_key(
    engine: Engine, app: Conveyor
) -> None:
    """Decision 1: two live jobs never share a dedupe key; the refusal names the holder."""
    old = await failed_job(engine, app, dedupe_key="k")
    [holder] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert holder.created and holder.id != old.id
    with pytest.raises(InvalidState, match=holder.id):
        await engine.retry_job(old.id)
    assert (await engine.get_job(old.id)).state == JobState.FAILED  # nothing changed
    assert await engine.retry_all("q") == 0  # skipped, not counted
    assert (await engine.get_job(old.id)).state == JobState.FAILED  # it stays where it is
    counts = await engine.counts("q")
    assert (counts.pending, counts.failed) == (1, 1)
    # Once the holder has finished, the key is free and the retry goes through.
    await engine.cancel_job(holder.id)
    assert (await engine.retry_job(old.id)).state == JobState.PENDING


async def test_retry_all_retries_the_others_and_skips_a_held_key(
    engine: Engine, app: Conveyor
) -> None:
    """Decision 1: `retry_all` counts only the jobs it retried."""
    held = await failed_job(engine, app, dedupe_key="k")
    free = await failed_job(engine, app, dedupe_key="other")
    plain = await failed_job(engine, app)
    [holder] = await engine.enqueue([app.build("t", {}, dedupe_key="k")])
    assert await engine.retry_all("q") == 2
    states = {j: (await engine.get_job(j)).state for j in (held.id, free.id, plain.id)}
    assert states == {
        held.id: JobState.FAILED,
        free.id: JobState.PENDING,
        plain.id: JobState.PENDING,
    }
    assert (await engine.get_job(holder.id)).state == JobState.PENDING


async def test_job_recovered_from_an_expired_lease_keeps_its_place(
    engine: Engine, app: Conveyor
) -> None:
    """Decision 2: back to pending ahead of jobs enqueued after it (same priority)."""
    first = app.build("t", {"n": 1}, max_attempts=3)
    await engine.enqueue([first])
    [job] = await claim(engine, 1, lease_ms=50)
    later = [app.build("t", {"n": n}) for n in (2, 3)]
    await engine.enqueue(later)

    async def recovered() -> bool:
        await engine.recover_expired(["q"])
        return (await engine.get_job(job.id)).state == JobState.PENDING

    await eventually(recovered, timeout=5, message="expired lease recovered")
    listed = await engine.list_jobs("q", JobState.PENDING, limit=10)
    assert [j.id for j in listed.jobs] == [first.id, *(n.id for n in later)]
    [again] = await claim(engine, 1)
    assert again.id == first.id and again.attempt == 2


async def test_clean_refuses_live_states_through_the_app(engine_url: str, app: Conveyor) -> None:
    """Decision 3: the facade refuses a live state once; nothing is removed."""
    [res] = await app.enqueue_many([{"task": "t", "payload": {}}])
    try:
        for state in (JobState.SCHEDULED, JobState.PENDING, JobState.RUNNING):
            # lifecycle.check_clean, applied once by the facade.
            with pytest.raises(InvalidState, match=f"not {state.value}: cancel live jobs"):
                await app.clean("q", state, older_than=0)
        assert (await app.get_job(res.id)).state == JobState.PENDING
    finally:
        await app.close()


async def test_clean_removes_finished_jobs_oldest_finish_first(
    engine: Engine, app: Conveyor
) -> None:
    """Decision 3: selected by finish time, not by creation time."""
    early, late = app.build("t", {"n": 1}), app.build("t", {"n": 2})
    await engine.enqueue([early])
    await engine.enqueue([late])
    jobs = {j.id: j for j in await claim(engine, 2)}
    # The job created last finishes first, the other one a few ms later (the engines
    # stamp finish times in whole ms; a short pause keeps the two apart).
    await complete(engine, jobs[late.id])
    await asyncio.sleep(0.02)
    await complete(engine, jobs[early.id])
    assert await engine.clean("q", JobState.COMPLETED, older_than_ms=0, limit=1) == 1
    with pytest.raises(JobNotFound):
        await engine.get_job(late.id)
    assert (await engine.get_job(early.id)).state == JobState.COMPLETED


async def test_workers_last_seen_is_the_engine_clock(engine: Engine) -> None:
    """Decision 4: a worker's own clock (here: far in the past) never wins."""
    skewed = orjson.dumps({"queues": ["q"], "last_seen": 1.0}).decode()
    await engine.register_worker("w-skewed", skewed, ttl_ms=60_000)
    [worker] = await engine.workers()
    # The engine stamps registration with its own clock: within a day of this host's
    # (engines on this machine), and nowhere near the worker's claim of 1970.
    assert abs(worker["last_seen"] - datetime.now(UTC).timestamp()) < 86_400
    assert worker["queues"] == ["q"]


async def test_jobs_due_at_the_same_moment_become_pending_in_enqueue_order(
    engine_url: str, app: Conveyor
) -> None:
    # Found by the differential test: SQLite promoted same-millisecond due jobs by row id,
    # which is not enqueue order when a batch mixes jobs with and without a dedupe key.
    from conveyor.clock import FakeClock

    clock = FakeClock()
    eng = open_engine(engine_url, clock=clock)
    await eng.connect()
    try:
        first, second = (
            app.build("t", {"n": 1}, delay=5),
            app.build("t", {"n": 2}, delay=5, dedupe_key="k"),
        )
        await eng.enqueue([first, second])
        clock.advance(5)
        assert [j.id for j in await claim(eng, 1)] == [first.id]
    finally:
        await eng.close()
