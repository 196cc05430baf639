"""Issue 14 item 4: `app.testing()` runs a user's tasks in pytest without a worker
process, on a private memory engine with a fake clock, and gives the app back after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobFailed, JobState, RateLimited
from conveyor.clock import Clock


def make_app(url: str) -> Conveyor:
    app = Conveyor(url)

    @app.task("add", queue="math")
    async def add(job: Job) -> Any:
        return job.payload["a"] + job.payload["b"]

    @app.task("flaky", queue="math", max_attempts=3, backoff=[60, 3600])
    async def flaky(job: Job) -> Any:
        if job.attempt < 3:
            raise ConnectionError(f"down on attempt {job.attempt}")
        return "ok"

    @app.task("chain", queue="other")
    def chain(job: Job) -> Any:  # sync handlers run too
        return "chained"

    @app.task("start_chain", queue="math")
    async def start_chain(job: Job) -> Any:
        await app.enqueue("chain", {})

    return app


async def test_run_until_idle_runs_jobs_retries_and_follow_ups(tmp_path: Path) -> None:
    app = make_app(f"sqlite:///{tmp_path / 'real.db'}")
    async with app.testing() as t:
        assert app.url == "memory://"
        added = await app.enqueue("add", {"a": 2, "b": 3})
        flaky = await app.enqueue("flaky", {})
        await app.enqueue("start_chain", {})
        started = t.clock.now()
        ran = await t.run_until_idle()
        assert await added.wait(timeout=0) == 5
        assert await flaky.wait(timeout=0) == "ok"
        assert t.clock.now() - started == pytest.approx(60 + 3600)  # no real time spent
        assert [j.result for j in await t.jobs(JobState.COMPLETED, task="chain")] == ["chained"]
        assert ran == 6  # add, 3 x flaky, start_chain, chain
    assert app.url == f"sqlite:///{tmp_path / 'real.db'}"
    assert type(app.clock) is Clock
    assert not (tmp_path / "real.db").exists(), "the test never touched the real engine"


async def test_without_advance_only_due_jobs_run() -> None:
    app = make_app("memory://")
    async with app.testing() as t:
        job = await app.enqueue("flaky", {})
        later = await app.enqueue("add", {"a": 1, "b": 1}, delay=30)
        await t.run_until_idle(advance=False)
        assert (await app.get_job(job.id)).state == JobState.SCHEDULED
        assert (await app.get_job(later.id)).state == JobState.SCHEDULED
        t.advance(30)
        await t.run_until_idle(advance=False)
        assert await later.wait(timeout=0) == 2


async def test_failures_surface_through_wait_with_the_traceback() -> None:
    app = Conveyor()

    @app.task("boom", max_attempts=2, backoff=5)
    async def boom(job: Job) -> None:
        raise ValueError("bad input")

    async with app.testing() as t:
        job = await app.enqueue("boom", {})
        await t.run_until_idle()
        with pytest.raises(JobFailed, match="ValueError: bad input") as caught:
            await job.wait(timeout=0)
        assert "raise ValueError" in (caught.value.traceback or "")
        assert (await app.get_job(job.id)).attempt == 2


async def test_a_task_that_never_stops_is_reported() -> None:
    app = Conveyor()

    @app.task("again")
    async def again(job: Job) -> None:
        raise RateLimited(retry_after=1)  # never spends an attempt

    async with app.testing() as t:
        await app.enqueue("again", {})
        with pytest.raises(RuntimeError, match="not idle after 5 passes"):
            await t.run_until_idle(max_rounds=5)
