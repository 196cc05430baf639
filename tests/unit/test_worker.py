"""Worker behaviour on the memory engine with a fake clock: no I/O, no settle sleeps.

Tests wait on conditions (`_until`, events set by handlers, spies on the engine),
never on a guess of how long something takes. Handlers that must run until stopped
wait on an event nobody sets rather than sleeping for a long time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobState, RateLimited, Retry, Unrecoverable, Worker
from conveyor.clock import FakeClock
from conveyor.engines.sqlite import SqliteEngine
from conveyor.testing import eventually


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    return Conveyor("memory://", clock=clock)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until `predicate()` holds (polled), failing after 5 s with `what`."""

    async def check() -> bool:
        return bool(predicate())

    await eventually(check, timeout=5, message=what)


async def _forever() -> None:
    """A handler body that runs until it is cancelled (timeout, lost lease, shutdown)."""
    await asyncio.Event().wait()


async def burst(app: Conveyor, **kwargs: Any) -> Worker:
    worker = Worker(app, queues=kwargs.pop("queues", ("default",)), burst=True, **kwargs)
    await asyncio.wait_for(worker.run(), 10)
    return worker


async def test_retries_follow_configured_backoff(app: Conveyor, clock: FakeClock) -> None:
    @app.task("flaky", max_attempts=4, backoff=[1, 5, 30])
    async def flaky(job: Job) -> None:
        raise RuntimeError(f"down on attempt {job.attempt}")

    job = await app.enqueue("flaky", {})
    for expected_delay in (1, 5, 30):
        await burst(app)
        stored = await app.get_job(job.id)
        assert stored.state == JobState.SCHEDULED
        assert stored.scheduled_at == pytest.approx(clock.now() + expected_delay)
        clock.advance(expected_delay)
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.attempt == 4
    assert [e.message for e in stored.errors] == [f"down on attempt {n}" for n in (1, 2, 3, 4)]
    assert "RuntimeError" in (stored.errors[0].traceback or "")


async def test_per_job_backoff_overrides_task_default(app: Conveyor, clock: FakeClock) -> None:
    @app.task("flaky", max_attempts=3, backoff=[100])
    async def flaky(job: Job) -> None:
        raise RuntimeError("no")

    job = await app.enqueue("flaky", {}, backoff=7)
    await burst(app)
    assert (await app.get_job(job.id)).scheduled_at == pytest.approx(clock.now() + 7)


async def test_retry_exception_uses_its_delay(app: Conveyor, clock: FakeClock) -> None:
    @app.task("later", max_attempts=3, backoff=[100])
    async def later(job: Job) -> None:
        raise Retry(delay=42, reason="provider busy")

    job = await app.enqueue("later", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.scheduled_at == pytest.approx(clock.now() + 42)
    assert stored.errors[0].message == "provider busy"


async def test_unrecoverable_skips_remaining_attempts(app: Conveyor) -> None:
    @app.task("bad", max_attempts=10)
    async def bad(job: Job) -> None:
        raise Unrecoverable("account closed")

    job = await app.enqueue("bad", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.attempt == 1
    assert stored.errors[0].type == "Unrecoverable" and stored.errors[0].message == "account closed"


async def test_timeout_is_a_failed_attempt_with_clear_error(
    app: Conveyor, clock: FakeClock
) -> None:
    @app.task("slow", max_attempts=2, backoff=0, timeout=0.05)
    async def slow(job: Job) -> None:
        await _forever()

    job = await app.enqueue("slow", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.FAILED and stored.attempt == 2
    assert [e.type for e in stored.errors] == ["JobTimeout", "JobTimeout"]
    assert "exceeded its 0.05s timeout" in stored.errors[0].message


async def test_handler_raising_timeouterror_itself_is_not_reported_as_job_timeout(
    app: Conveyor,
) -> None:
    @app.task("net", max_attempts=1, timeout=10)
    async def net(job: Job) -> None:
        raise TimeoutError("upstream timed out")

    job = await app.enqueue("net", {})
    await burst(app)
    assert (await app.get_job(job.id)).errors[0].type == "TimeoutError"


async def test_sync_handlers_run_in_threads(app: Conveyor) -> None:
    import threading

    main = threading.get_ident()

    @app.task("sync")
    def sync(job: Job) -> dict[str, bool]:
        return {"in_thread": threading.get_ident() != main}

    job = await app.enqueue("sync", {})
    await burst(app)
    assert (await app.get_job(job.id)).result == {"in_thread": True}


async def test_unknown_task_fails_that_job_only(app: Conveyor) -> None:
    @app.task("known")
    async def known(job: Job) -> str:
        return "ok"

    stranger = await app.enqueue("not.here", {}, queue="default")
    fine = await app.enqueue("known", {})
    await burst(app)
    failed = await app.get_job(stranger.id)
    assert failed.state == JobState.FAILED and failed.attempt == 1
    assert failed.errors[0].type == "UnknownTask"
    assert "no handler for task 'not.here'" in failed.errors[0].message
    assert (await app.get_job(fine.id)).state == JobState.COMPLETED


async def test_malformed_stored_job_is_failed_with_reason(app: Conveyor) -> None:
    @app.task("known")
    async def known(job: Job) -> str:
        return "ok"

    bad = await app.enqueue("known", {})
    fine = await app.enqueue("known", {})
    engine = app.engine
    assert isinstance(engine, SqliteEngine)  # memory:// is SQLite in memory

    async def store_payload(text: str) -> None:  # what a foreign writer could leave
        await engine._write(
            lambda c: c.execute("UPDATE jobs SET payload = ? WHERE id = ?", (text, bad.id))
        )

    await store_payload("{not json")
    await burst(app)
    await store_payload("{}")  # so get_job can show the recorded error
    failed = await app.get_job(bad.id)
    assert failed.state == JobState.FAILED and failed.errors[0].type == "MalformedJob"
    assert "malformed" in failed.errors[0].message
    assert (await app.get_job(fine.id)).state == JobState.COMPLETED


async def test_priorities_are_respected_by_the_worker(app: Conveyor) -> None:
    ran: list[int] = []

    @app.task("p")
    async def p(job: Job) -> None:
        ran.append(job.payload["p"])

    await app.enqueue_many(
        [{"task": "p", "payload": {"p": p}, "priority": p} for p in (1, 5, -3, 9)]
    )
    await burst(app, concurrency=1)
    assert ran == [9, 5, 1, -3]


async def test_progress_is_stored_and_published(app: Conveyor) -> None:
    @app.task("long")
    async def long(job: Job) -> None:
        await job.progress(50)
        await job.progress({"step": "upload", "pct": 90})

    job = await app.enqueue("long", {})
    await burst(app)
    stored = await app.get_job(job.id)
    assert stored.progress_value == {"step": "upload", "pct": 90}


async def test_cancelled_running_job_is_stopped_and_result_discarded(app: Conveyor) -> None:
    started = asyncio.Event()

    @app.task("long")
    async def long(job: Job) -> None:
        started.set()
        await _forever()

    job = await app.enqueue("long", {})
    worker = Worker(app, lease_timeout=0.3)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    await app.engine.cancel_job(job.id)
    await _until(lambda: worker.in_flight == 0, "the next heartbeat noticed the lost lease")
    assert worker.stats.lost == 1
    worker.stop()
    await asyncio.wait_for(run, 5)
    assert (await app.get_job(job.id)).state == JobState.CANCELLED


async def test_full_worker_refills_the_slot_a_cancelled_job_freed(app: Conveyor) -> None:
    # With every slot busy the claim loop sleeps until a slot frees; a job stopped by its
    # lost lease must wake it, or the worker idles with work pending.
    started = asyncio.Event()

    @app.task("long")
    async def long(job: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    @app.task("short")
    async def short(job: Job) -> str:
        return "ran"

    job = await app.enqueue("long", {})
    worker = Worker(app, concurrency=1, lease_timeout=0.3)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    follow = await app.enqueue("short", {})
    await app.engine.cancel_job(job.id)
    assert await app.wait(follow.id, timeout=5) == "ran"
    worker.stop()
    await asyncio.wait_for(run, 5)


async def test_stop_releases_jobs_past_shutdown_timeout(app: Conveyor) -> None:
    started = asyncio.Event()

    @app.task("long")
    async def long(job: Job) -> None:
        started.set()
        await _forever()

    job = await app.enqueue("long", {})
    worker = Worker(app, shutdown_timeout=0.05)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(run, 5)
    stored = await app.get_job(job.id)
    assert stored.state == JobState.PENDING and stored.attempt == 0
    assert worker.stats.released == 1


async def _ten_gated_jobs(app: Conveyor) -> asyncio.Event:
    """Ten jobs of a task that runs until the returned event is set."""
    gate = asyncio.Event()

    @app.task("gated")
    async def gated(job: Job) -> None:
        await gate.wait()

    for _ in range(10):
        await app.enqueue("gated", {})
    return gate


async def test_short_jobs_are_claimed_ahead_and_handed_back_on_stop(app: Conveyor) -> None:
    gate = await _ten_gated_jobs(app)
    worker = Worker(app, concurrency=4, shutdown_timeout=5)
    # As measured after a while of jobs far shorter than a round trip: claim ahead.
    worker._job_time, worker._round_trip = 0.001, 0.01
    run = asyncio.create_task(worker.run())
    await _until(lambda: worker.in_flight == 4 and len(worker._ready) == 2, "4 running, 2 ahead")
    assert (await app.counts("default")).running == 6  # the engine holds their leases too
    worker.stop()
    gate.set()
    await asyncio.wait_for(run, 5)
    counts = await app.counts("default")
    assert counts.completed == 4 and counts.pending == 6 and counts.running == 0
    waiting = (await app.engine.list_jobs("default", JobState.PENDING, limit=10)).jobs
    assert all(j.attempt == 0 for j in waiting)  # handed back unstarted: no attempt spent
    assert worker.stats.released == 2


async def test_jobs_claimed_ahead_keep_their_leases_while_they_wait(
    app: Conveyor, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = await _ten_gated_jobs(app)
    renewed_at: list[float] = []  # the engine-clock time each heartbeat call started at
    heartbeat = app.engine.heartbeat

    async def spy(leases: Sequence[tuple[str, str]], *, lease_ms: int) -> list[str]:
        at = clock.now()
        lost = await heartbeat(leases, lease_ms=lease_ms)
        renewed_at.append(at)
        return lost

    monkeypatch.setattr(app.engine, "heartbeat", spy)
    worker = Worker(app, concurrency=4, lease_timeout=0.3)  # heartbeat every 0.1 s
    worker._job_time, worker._round_trip = 0.001, 0.01
    run = asyncio.create_task(worker.run())
    await _until(lambda: worker.in_flight == 4 and len(worker._ready) == 2, "4 running, 2 ahead")
    for _ in range(10):  # 1 s on the engine's clock, three times the lease
        clock.advance(0.1)  # a third of the lease: only a renewal in each step saves them
        now = clock.now()
        await _until(lambda now=now: bool(renewed_at) and renewed_at[-1] >= now, "a heartbeat")
    gate.set()
    await _until(lambda: worker.stats.processed == 10, "all ten jobs done")
    worker.stop()
    await asyncio.wait_for(run, 5)
    done = (await app.engine.list_jobs("default", JobState.COMPLETED, limit=10)).jobs
    assert len(done) == 10 and all(j.attempt == 1 for j in done)  # none expired and re-ran
    assert worker.stats.lost == 0


async def test_long_jobs_are_not_claimed_ahead(app: Conveyor) -> None:
    gate = await _ten_gated_jobs(app)
    worker = Worker(app, concurrency=4)
    worker._job_time, worker._round_trip = 5.0, 0.01  # jobs far longer than a round trip
    run = asyncio.create_task(worker.run())
    # Once the claims in flight are back, nothing more may be claimed: the claim loop
    # claims `concurrency + _prefetch()` minus what it holds, and for long jobs the
    # prefetch is none (asserted directly: a negative has no event to wait for).
    await _until(lambda: worker.in_flight == 4 and worker._in_flight == 0, "4 running")
    assert worker._prefetch() == 0
    assert not worker._ready and (await app.counts("default")).running == 4
    worker.stop()
    gate.set()
    await asyncio.wait_for(run, 5)


async def test_idle_worker_wakes_on_enqueue(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    done = asyncio.Event()

    @app.task("t")
    async def t(job: Job) -> None:
        done.set()

    idle = asyncio.Event()
    wait_for_jobs = app.engine.wait_for_jobs

    async def spy(queues: Sequence[str], timeout: float) -> None:
        idle.set()  # the worker found nothing and now waits for a wake-up
        await wait_for_jobs(queues, timeout)

    monkeypatch.setattr(app.engine, "wait_for_jobs", spy)
    worker = Worker(app)  # idle waits last up to 5 s: a wake-up is what ends this one
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(idle.wait(), 5)
    await app.enqueue("t", {})
    await asyncio.wait_for(done.wait(), 1)
    worker.stop()
    await asyncio.wait_for(run, 5)


async def test_rate_limited_defers_without_spending_an_attempt(
    app: Conveyor, clock: FakeClock
) -> None:
    """A provider's 429 is not a failure: the job runs again after retry_after, with its
    attempt budget intact, however often it happens."""
    runs: list[int] = []
    deferred: list[Job] = []

    @app.task("call", max_attempts=1)
    async def call(job: Job) -> str:
        runs.append(job.attempt)
        if len(runs) < 4:
            raise RateLimited(retry_after=2.5, reason="provider said 429")
        return "ok"

    app.on("deferred")(deferred.append)
    job = await app.enqueue("call", {})
    for _ in range(3):
        worker = await burst(app)
        stored = await app.get_job(job.id)
        assert stored.state == JobState.SCHEDULED and stored.attempt == 0
        assert stored.scheduled_at == pytest.approx(clock.now() + 2.5)
        assert stored.errors == []  # not a failed attempt
        assert worker.stats.deferred == 1
        clock.advance(2.5)
    await burst(app)
    done = await app.get_job(job.id)
    assert done.state == JobState.COMPLETED and done.attempt == 1 and done.result == "ok"
    assert runs == [1, 1, 1, 1]  # max_attempts=1, yet four runs: deferrals spend nothing
    assert [j.attempt for j in deferred] == [0, 0, 0]
    events = [e async for e in _events(app, job.id)]
    assert [e.data.get("reason") for e in events if e.kind == "deferred"] == [
        "provider said 429"
    ] * 3


async def _events(app: Conveyor, job_id: str) -> Any:
    engine = await app.connect()
    for event in await engine.read_events(["default"], since={"default": "0"}, count=100,
                                          block_ms=0):  # fmt: skip
        if event.job_id == job_id:
            yield event


def test_rate_limited_rejects_a_negative_delay() -> None:
    with pytest.raises(ValueError, match="retry_after"):
        RateLimited(retry_after=-1)


async def test_background_loops_survive_unexpected_errors(app: Conveyor) -> None:
    """An error nobody planned for (here a RuntimeError from the engine) in the heartbeat
    or the claim loop is retried with backoff, readiness names it meanwhile, and the
    worker keeps running jobs: no loop dies silently (issue 13)."""
    from conveyor.testing import eventually

    done = asyncio.Event()

    @app.task("work")
    async def work(job: Job) -> None:
        done.set()

    engine = await app.connect()
    real_register, real_exchange = engine.register_worker, engine.exchange
    failures = {"register": 3, "exchange": 2}
    calls = {"register": 0}

    async def register_worker(*args: Any, **kwargs: Any) -> None:
        calls["register"] += 1
        if failures["register"]:
            failures["register"] -= 1
            raise RuntimeError("unexpected reply from the engine")
        await real_register(*args, **kwargs)

    async def exchange(*args: Any, **kwargs: Any) -> Any:
        if failures["exchange"]:
            failures["exchange"] -= 1
            raise RuntimeError("script bug")
        return await real_exchange(*args, **kwargs)

    engine.register_worker = register_worker  # type: ignore[method-assign]
    engine.exchange = exchange  # type: ignore[method-assign]
    worker = Worker(app, lease_timeout=0.3)
    running = asyncio.create_task(worker.run())
    seen: list[str] = []

    async def failing_seen() -> bool:
        if worker.loops.failing():
            seen.append((await app.readiness(failing=worker.loops.failing()))[1])
        return bool(seen)

    await eventually(failing_seen, interval=0.005, message="readiness names the failing loop")
    await app.enqueue("work", {})
    await asyncio.wait_for(done.wait(), 10)

    async def recovered() -> bool:  # the heartbeat went on beating after failing
        return calls["register"] > 4 and not worker.loops.failing()

    await eventually(recovered, message="both loops recovered")
    assert not running.done(), "the worker is still running"
    assert "loop failing, retrying with backoff" in seen[0] and "RuntimeError" in seen[0]
    worker.stop()
    await asyncio.wait_for(running, 10)
    assert [j["id"] for j in await app.workers()] == []


async def test_freeze_heap_takes_start_up_objects_out_of_full_collections(app: Conveyor) -> None:
    """`conveyor worker` freezes its start-up heap, so a full collection no longer walks
    every imported module's objects in the middle of a job's pickup (the W2 tail);
    an embedded worker (the default) leaves the host process's collector alone."""
    import gc

    @app.task("noop")
    async def noop(job: Job) -> None:
        return None

    await app.enqueue("noop", {})
    gc.unfreeze()
    try:
        await burst(app)
        assert gc.get_freeze_count() == 0
        await app.enqueue("noop", {})
        await burst(app, freeze_heap=True)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
