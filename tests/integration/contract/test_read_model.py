"""The engine contract, read model: listings and their pages, events, throughput.

Every test runs on memory, SQLite and Redis (conftest.py).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from conveyor import Conveyor, JobState
from conveyor.clock import FakeClock
from conveyor.engines import Engine, Outcome
from conveyor.testing import eventually

from .helpers import claim, err, finish, settled_events, still_waiting


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
    assert [j.payload["i"] for j in only_a.jobs] == [1, 3, 5] and only_a.cursor is None
    page = await engine.list_jobs("q", JobState.PENDING, tenant="a", limit=2)
    assert page.cursor  # the tenant filter pages too
    rest = await engine.list_jobs("q", JobState.PENDING, tenant="a", cursor=page.cursor)
    assert [j.payload["i"] for j in page.jobs + rest.jobs] == [1, 3, 5] and rest.cursor is None
    for job in await claim(engine, 7):
        await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    done = await engine.list_jobs("q", JobState.COMPLETED, limit=10)
    assert len(done.jobs) == 7 and done.cursor is None


async def walk(engine: Engine, state: JobState, limit: int = 4) -> list[str]:
    """Every job id of `state`, read page by page."""
    out: list[str] = []
    cursor = None
    while True:
        page = await engine.list_jobs("q", state, limit=limit, cursor=cursor)
        out += [j.id for j in page.jobs]
        if page.cursor is None:
            return out
        cursor = page.cursor


async def test_pages_are_complete_when_timestamps_are_equal(engine: Engine, app: Conveyor) -> None:
    """One batch is enqueued, claimed and finished in one call each, so many jobs share a
    millisecond; keyset pages must still list each exactly once, and the pending listing
    is the claim order (priority, then FIFO)."""
    jobs = [app.build("t", {}, priority=p % 3) for p in range(23)]
    await engine.enqueue(jobs)
    expected = [j.id for j in sorted(jobs, key=lambda j: -j.priority)]  # stable: FIFO
    assert await walk(engine, JobState.PENDING) == expected
    claimed = await claim(engine, 23)
    assert [j.id for j in claimed] == expected  # claim order == listing order
    running = await walk(engine, JobState.RUNNING)
    assert sorted(running) == sorted(expected) and len(running) == 23
    await finish(
        engine, *(Outcome(j.id, str(j.token), "complete", result_json="1") for j in claimed)
    )
    completed = await walk(engine, JobState.COMPLETED)
    assert len(completed) == len(set(completed)) == 23


async def test_a_garbage_cursor_is_refused(engine: Engine, app: Conveyor) -> None:
    """A cursor this engine did not hand out is refused with a ValueError that names it,
    on a queue with jobs and on one without."""
    with pytest.raises(ValueError, match="cursor"):
        await engine.list_jobs("q", JobState.COMPLETED, cursor="garbage")
    await engine.enqueue([app.build("t", {})])
    for state in (JobState.PENDING, JobState.COMPLETED):
        with pytest.raises(ValueError, match="cursor"):
            await engine.list_jobs("q", state, cursor="garbage")


async def test_events_record_every_state_change(engine: Engine, app: Conveyor) -> None:
    start = await engine.last_event_ids(["q"])
    [res] = await engine.enqueue([app.build("t", {})])
    [job] = await claim(engine)
    await engine.set_progress(job.id, str(job.token), orjson.dumps(50).decode())
    await finish(engine, Outcome(job.id, str(job.token), "complete", result_json="1"))
    events = await settled_events(engine, start, 4)
    mine = [e for e in events if e.job_id == res.id]
    assert [e.kind for e in mine] == ["enqueued", "started", "progress", "completed"]
    assert mine[2].data.get("progress") == 50
    assert (await engine.get_job(job.id)).progress_value == 50
    later = await engine.read_events(["q"], since={"q": mine[-1].id}, count=100, block_ms=50)
    assert later == []


async def test_read_events_blocks_until_an_event(
    engine: Engine, peer: Engine, app: Conveyor
) -> None:
    start = await engine.last_event_ids(["q"])
    reader = asyncio.ensure_future(
        engine.read_events(["q"], since=start, count=10, block_ms=10_000)
    )
    assert await still_waiting(reader), "read_events must block while there is no event"
    [res] = await peer.enqueue([app.build("t", {})])
    events = await asyncio.wait_for(reader, 5)
    assert [(e.kind, e.job_id, e.queue) for e in events] == [("enqueued", res.id, "q")]


async def test_read_events_since_none_sees_only_later_events(
    engine: Engine, peer: Engine, app: Conveyor
) -> None:
    """`since=None` means "from now on": events stored before the call are not returned.
    When "now" is fixed differs by engine (Redis: when XREAD reaches the server), so the
    peer keeps enqueueing until the reader returns, instead of guessing a settle time."""
    [old] = await engine.enqueue([app.build("t", {})])
    reader = asyncio.ensure_future(
        engine.read_events(["q"], since=None, count=100, block_ms=10_000)
    )
    sent: list[str] = []

    async def delivered() -> bool:
        sent.extend(r.id for r in await peer.enqueue([app.build("t", {})]))
        return reader.done()

    await eventually(delivered, timeout=10, message="an event after the call reached the reader")
    events = await reader
    assert events and all(e.kind == "enqueued" and e.job_id in sent for e in events)
    assert old.id not in {e.job_id for e in events}


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
    clocked: Engine, clock: FakeClock, app: Conveyor
) -> None:
    await clocked.enqueue([app.build("t", {"i": i}, max_attempts=1) for i in range(4)])
    for i, job in enumerate(await claim(clocked, 4, lease_ms=3_600_000)):
        kind = "fail" if i == 3 else "complete"
        await finish(
            clocked,
            Outcome(job.id, str(job.token), kind, error_json=err(1), result_json="1"),  # type: ignore[arg-type]
        )
        clock.advance(61 if i < 2 else 0)  # finishes at minutes -2, -1, 0 and 0
    history = await clocked.throughput_history("q", 5)
    assert history.completed == [0, 0, 1, 1, 1] and history.failed == [0, 0, 0, 0, 1]
    clock.advance(3 * 60)  # the oldest finish slides out of a 5-minute window
    assert (await clocked.throughput_history("q", 5)).completed == [1, 1, 0, 0, 0]
