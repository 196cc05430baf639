"""Cancellation and blocking handlers (issue 14.6), on every engine."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from conveyor import Conveyor, Job, JobState, Worker


async def test_cancelling_a_running_async_job_cancels_its_handler(engine_url: str) -> None:
    app = Conveyor(engine_url)
    started, cancelled = asyncio.Event(), asyncio.Event()

    @app.task("long")
    async def long(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # what the handler sees at its next await
            cancelled.set()
            raise

    job = await app.enqueue("long", {})
    worker = Worker(app, lease_timeout=0.6)  # heartbeats every 0.2 s
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 10)
        await app.cancel_job(job.id)
        # The next heartbeat finds the lease revoked and cancels the handler.
        await asyncio.wait_for(cancelled.wait(), 10)
        assert worker.in_flight == 0 and worker.stats.lost == 1
        assert (await app.get_job(job.id)).state == JobState.CANCELLED
    finally:
        worker.stop()
        await asyncio.wait_for(run, 10)
        await app.close()


async def test_a_handler_blocking_the_loop_is_logged_with_its_task_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Conveyor("memory://")

    @app.task("report.build")
    async def build(job: Job) -> None:
        time.sleep(0.6)  # the mistake: a blocking call inside `async def`

    @app.task("fine")
    async def fine(job: Job) -> None:
        await asyncio.sleep(0.01)

    caplog.set_level(logging.WARNING, logger="conveyor.worker")
    blocked = await app.enqueue("report.build", {})
    await app.enqueue("fine", {})
    worker = Worker(app, burst=True)
    worker.block_warn_s = 0.3  # the default is 1 s; keep the test short
    await asyncio.wait_for(worker.run(), 30)
    (line,) = [r.getMessage() for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert f"task 'report.build' (job {blocked.id})" in line
    assert "test_cancellation.py" in line and "time.sleep(0.6)" in line
    assert (await app.get_job(blocked.id)).state == JobState.COMPLETED
