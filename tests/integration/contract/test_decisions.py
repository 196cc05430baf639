"""The engine contract, the lifecycle decisions (conveyor.lifecycle, the README's "Job
contract"): each rule once differed between engines. Every test runs on memory, SQLite
and Redis (conftest.py); an engine that does not follow a rule yet is marked
`diverges(...)` naming the decision (none is, today).
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from conveyor import Conveyor, InvalidState, Job, JobNotFound, JobState
from conveyor.clock import FakeClock
from conveyor.engines import Engine, Outcome
from conveyor.testing import eventually

from .helpers import claim, complete, engine_time_passes, err, finish


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
    # The job created last finishes first; the engine stamps finish times in whole ms, so
    # the other one finishes once the engine's own clock has moved on.
    await complete(engine, jobs[late.id])
    await engine_time_passes(engine)
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


async def test_workers_last_seen_is_exactly_the_engine_clock(
    clocked: Engine, clock: FakeClock
) -> None:
    """Decision 4, to the millisecond: the engine's (here fake) clock at registration."""
    await clocked.register_worker("w", '{"last_seen": 1.0, "queues": ["q"]}', 10_000)
    [worker] = await clocked.workers()
    assert worker["last_seen"] == clock.now() and worker["queues"] == ["q"]
