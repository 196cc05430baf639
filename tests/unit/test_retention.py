"""Retention keeps up with the load (issue 13, item 2): memory engine, fake clock."""

from __future__ import annotations

import asyncio

import pytest

from conveyor import ConfigError, Conveyor, Job, JobState, Worker
from conveyor.clock import FakeClock
from conveyor.retention import (
    BEHIND_PAUSE_S,
    MIN_INTERVAL_S,
    PassReport,
    RetentionPolicy,
    clean_pass,
    next_interval,
)
from conveyor.scheduler import Scheduler
from conveyor.testing import eventually


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Conveyor:
    app = Conveyor("memory://", clock=clock)

    @app.task("work")
    async def work(job: Job) -> None:
        return None

    return app


async def completed(app: Conveyor, n: int) -> None:
    """`n` completed jobs, finished now."""
    await app.enqueue_many([{"task": "work"} for _ in range(n)])
    await asyncio.wait_for(Worker(app, burst=True, concurrency=50).run(), 30)
    assert (await app.counts("default")).completed == n


async def test_a_pass_runs_until_the_queue_is_within_retention(
    app: Conveyor, clock: FakeClock
) -> None:
    """The old pass stopped after 10 batches; this one deletes the whole backlog, one
    bounded call at a time."""
    await completed(app, 2_500)
    clock.advance(120)
    policy = RetentionPolicy(keep_completed=60, batch=100, max_batches=1_000)
    report = await clean_pass(app, ["default"], policy)
    assert (report.deleted, report.caught_up, report.calls) == (
        2_500,
        True,
        28,
    )  # 26 + failed + cancelled
    assert (await app.counts("default")).completed == 0


async def test_a_pass_over_its_budget_is_behind_and_runs_again_soon(
    app: Conveyor, clock: FakeClock
) -> None:
    await completed(app, 600)
    clock.advance(120)
    policy = RetentionPolicy(keep_completed=60, batch=100, max_batches=4)
    report = await clean_pass(app, ["default"], policy)
    assert (report.deleted, report.caught_up) == (400, False)
    assert next_interval(policy, 60, report) == BEHIND_PAUSE_S


async def test_many_queues_within_retention_are_one_caught_up_pass(app: Conveyor) -> None:
    """A look at a queue with nothing to delete does not spend the budget: with 50 queues
    x 3 states (150 calls) over a budget of 100, the pass used to stop "behind" and run
    again every BEHIND_PAUSE_S, an idle worker's ~3,500 Redis commands/s (issue 15)."""
    queues = [f"q{i:02d}" for i in range(50)]
    policy = RetentionPolicy(keep_completed=60, keep_failed=3600)
    report = await clean_pass(app, queues, policy)
    assert (report.deleted, report.caught_up, report.calls) == (0, True, 150)
    assert next_interval(policy, policy.max_interval, report) == policy.max_interval


async def test_jobs_within_retention_are_kept(app: Conveyor, clock: FakeClock) -> None:
    await completed(app, 10)
    clock.advance(30)
    report = await clean_pass(app, ["default"], RetentionPolicy(keep_completed=60))
    assert (report.deleted, report.caught_up) == (0, True)


def test_the_interval_adapts_to_what_passes_find() -> None:
    policy = RetentionPolicy(interval=60, batch=100)
    heavy = PassReport(deleted=5_000)
    assert next_interval(policy, 60, heavy) == 30
    assert next_interval(policy, 1.5, heavy) == MIN_INTERVAL_S
    assert next_interval(policy, 4, PassReport(deleted=10)) == 8  # quiet: back off
    assert next_interval(policy, 50, PassReport(deleted=0)) == 60  # up to the setting
    assert next_interval(policy, 10, PassReport(deleted=500)) == 10


def test_passes_come_at_least_every_quarter_of_the_keep_time() -> None:
    """With keep 20 s and passes every 60 s, completed jobs piled up to rate x 80 s
    before each pass (bench/retention_soak.txt); a quarter of the keep bounds that."""
    short = RetentionPolicy(keep_completed=20, keep_failed=None, interval=60)
    assert short.max_interval == 5
    assert next_interval(short, 5, PassReport(deleted=0)) == 5
    assert RetentionPolicy().max_interval == 60  # 24 h / 7 d: the interval setting
    assert RetentionPolicy(keep_completed=2, interval=60).max_interval == MIN_INTERVAL_S


def test_bad_settings_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="keep_completed=0"):
        RetentionPolicy(keep_completed=0)
    with pytest.raises(ConfigError, match="batch"):
        RetentionPolicy(batch=0)
    assert not RetentionPolicy(keep_completed=None, keep_failed=None).enabled


async def test_workers_clean_their_queues_with_no_scheduler(
    app: Conveyor, clock: FakeClock
) -> None:
    await completed(app, 300)
    failed = await app.enqueue("work", {})
    await app.cancel_job(failed.id)
    clock.advance(120)
    worker = Worker(app, retention=RetentionPolicy(keep_completed=60, keep_failed=3600))
    running = asyncio.create_task(worker.run())

    async def cleaned() -> bool:
        return (await app.counts("default")).completed == 0

    await eventually(cleaned, message="the worker deleted the completed jobs")
    assert (await app.get_job(failed.id)).state is JobState.CANCELLED, "kept for 1h"
    assert worker.loops.failing() == {}
    worker.stop()
    await asyncio.wait_for(running, 10)


async def test_the_scheduler_catches_up_in_one_pass(app: Conveyor, clock: FakeClock) -> None:
    await completed(app, 1_500)
    clock.advance(120)
    scheduler = Scheduler(app, keep_completed=60, clean_batch=100)
    report = await scheduler.tick()
    assert report.cleaned == 1_500
