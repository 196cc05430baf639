"""The app facade's operator and read side: what the CLI, API, dashboard, status,
scheduler and live hub use instead of engine methods. Arguments are checked once here,
with lifecycle's rules and messages."""

from __future__ import annotations

import pytest

from conveyor import ConfigError, Conveyor, InvalidJob, InvalidState, JobState
from conveyor.engines import Outcome
from conveyor.limits import QueueLimits


@pytest.fixture
async def app() -> Conveyor:
    app = Conveyor("memory://")

    @app.task("t", queue="q")
    async def handler(job: object) -> None: ...

    return app


async def test_enqueue_built_says_created_or_deduplicated(app: Conveyor) -> None:
    first = await app.enqueue_built(app.build("t", {"n": 1}, dedupe_key="k"))
    again = await app.enqueue_built(app.build("t", {"n": 2}, dedupe_key="k"))
    assert first.created and not again.created
    assert again.job.id == first.job.id and again.job.payload == {"n": 1}


async def test_clean_and_retry_all_refuse_with_lifecycle_rules(app: Conveyor) -> None:
    await app.enqueue("t", {})
    with pytest.raises(InvalidState, match="cancel live jobs first"):
        await app.clean("q", JobState.PENDING, older_than=0)
    with pytest.raises(InvalidState, match="failed or cancelled"):
        await app.retry_all("q", "completed")
    with pytest.raises(InvalidJob, match="state 'done' is unknown"):
        await app.clean("q", "done", older_than=0)
    with pytest.raises(InvalidJob, match="older_than >= 0"):
        await app.clean("q", JobState.COMPLETED, older_than=-1)
    with pytest.raises(InvalidJob, match="queue name"):
        await app.retry_all("bad queue")
    assert (await app.counts("q")).pending == 1  # nothing changed


async def test_change_limits_changes_only_what_it_names(app: Conveyor) -> None:
    await app.set_limits("q", concurrency=4, rate="10/1m")
    assert await app.change_limits("q", tenant_concurrency=2) == QueueLimits.build(
        concurrency=4, tenant_concurrency=2, rate="10/1m"
    )
    assert await app.change_limits("q", clear=True, rate="5/1s") == QueueLimits.build(rate="5/1s")
    doc = await app.limits_document("q")
    assert doc["limits"]["rate"] == "5/1s" and doc["pending"] == 0
    with pytest.raises(ConfigError, match="rate='fast' is invalid"):
        await app.change_limits("q", rate="fast")


async def test_throughput_reads_every_queue_or_the_ones_named(app: Conveyor) -> None:
    engine = await app.connect()
    job = await app.enqueue("t", {})
    (claimed,) = (
        await engine.exchange([], queues=["q"], limit=1, worker_id="w", lease_ms=9000)
    ).jobs
    await engine.exchange(
        [Outcome(job.id, str(claimed.token), "complete", result_json="null")],
        queues=["q"],
        limit=0,
        worker_id="w",
        lease_ms=9000,
    )
    (row,) = await app.throughput(None, 5)
    assert row.queue == "q" and sum(row.completed) == 1
    assert await app.throughput(["other"], 5) != []
    with pytest.raises(InvalidJob, match="minutes=0"):
        await app.throughput(None, 0)


async def test_readiness_says_why(app: Conveyor) -> None:
    assert await app.readiness(stopping=True) == (False, "shutting down")
    ok, reason = await app.readiness()
    assert not ok and "not durable" in reason  # memory:// is for tests
    assert await app.ping() >= 0


async def test_events_are_read_through_the_facade(app: Conveyor) -> None:
    start = await app.event_positions(["q"])
    job = await app.enqueue("t", {})
    events = await app.read_events(["q"], since=start, block_ms=0)
    assert [(e.kind, e.job_id) for e in events] == [("enqueued", job.id)]


async def test_leases_are_exclusive_and_released(app: Conveyor) -> None:
    assert await app.acquire_lease("lead", "a", 30)
    assert not await app.acquire_lease("lead", "b", 30)
    info = await app.lease_info("lead")
    assert info is not None and info.holder == "a"
    assert await app.release_lease("lead", "a")
    assert await app.acquire_lease("lead", "b", 30)
