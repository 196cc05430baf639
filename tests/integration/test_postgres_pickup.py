"""The one-hop pickup on Postgres (engines/postgres/pickup.py, migration 0011): an idle
worker is handed a new job, claimed for it, in the NOTIFY that wakes it; everything a rule
could hold back still goes through pending; a handed job is never lost, and a worker
whose session is gone is never handed one.

Real Postgres (the session's database, a schema per test), separate engines standing for
separate processes: `worker` accepts handed jobs, `producer` enqueues.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from conveyor.engines.base import HandsOff, Outcome
from conveyor.engines.postgres import PostgresEngine
from conveyor.job import Job, JobState
from conveyor.limits import QueueLimits
from tests.postgres_server import PostgresServer

from .handoffs import handed, new


@pytest.fixture
async def worker(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    eng = PostgresEngine(postgres_url)
    await eng.connect()
    eng.accept_handoffs("w1")
    yield eng
    await eng.close()


@pytest.fixture
async def producer(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    eng = PostgresEngine(postgres_url)
    await eng.connect()
    yield eng
    await eng.close()


async def go_idle(
    engine: PostgresEngine, worker_id: str = "w1", lease_ms: int = 30_000, limit: int = 5
) -> None:
    """An exchange that finds nothing (it registers the worker where it may)."""
    got = await engine.exchange(
        [], queues=["q"], limit=limit, worker_id=worker_id, lease_ms=lease_ms
    )
    assert got.jobs == []


async def registrations(engine: PostgresEngine) -> list[tuple[str, str, int]]:
    async def read(conn: object) -> list[tuple[str, str, int]]:
        cur = await conn.execute(  # type: ignore[attr-defined]
            f"SELECT queue, worker, room FROM {engine.schema_sql}.waiting ORDER BY worker"
        )
        return [(str(q), str(w), int(r)) for q, w, r in await cur.fetchall()]

    return await engine._run(read, single=True)


async def test_an_idle_worker_is_handed_the_new_job_claimed_for_it(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    assert isinstance(worker, HandsOff)
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    assert res.created and res.state is JobState.RUNNING  # claimed in the enqueue
    [job] = await handed(worker)
    assert (job.id, job.state, job.attempt, job.worker) == (res.id, JobState.RUNNING, 1, "w1")
    stored = await producer.get_job(res.id)
    assert (stored.state, stored.token, stored.attempt) == (JobState.RUNNING, job.token, 1)
    assert stored.started_at is not None and stored.worker == "w1"
    events = await producer.read_events(["q"], since={"q": "0"}, count=10, block_ms=0)
    assert [e.kind for e in events][-2:] == ["enqueued", "started"]
    # It is an ordinary claim: a wrong token is fenced off, the right one completes it.
    fenced = await worker.exchange(
        [Outcome(job.id, "h-not-the-token", "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert fenced.lost == [job.id]
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    assert (await producer.get_job(res.id)).state is JobState.COMPLETED


@pytest.mark.parametrize(
    "case",
    [
        "concurrency limit",
        "rate limit",
        "tenant job",
        "batch",
        "paused",
        "not accepted",
        "delayed",
        "already pending",
    ],
)
async def test_what_a_rule_could_hold_back_goes_through_pending(
    worker: PostgresEngine, producer: PostgresEngine, case: str
) -> None:
    worker_id = "w1"
    if case == "not accepted":
        worker_id = "w2"  # never called accept_handoffs
    await go_idle(worker, worker_id)
    # Rules set after the worker registered hold as well: the enqueue checks them.
    if case == "concurrency limit":
        await producer.set_limits("q", QueueLimits(concurrency=5))
    elif case == "rate limit":
        await producer.set_limits("q", QueueLimits(rate=100, rate_window_ms=1000))
    elif case == "paused":
        await producer.pause("q")
    elif case == "already pending":  # FIFO: the older pending job goes first
        async with await psycopg.AsyncConnection.connect(producer.conninfo) as conn:
            await producer.enqueue_in(conn, [new()])
            await conn.commit()
    if case == "tenant job":
        jobs = [new(tenant="acme")]
    elif case == "batch":
        jobs = [new(), new()]
    elif case == "delayed":
        jobs = [new(delay_ms=60_000)]
    else:
        jobs = [new()]
    results = await producer.enqueue(jobs)
    want = JobState.SCHEDULED if case == "delayed" else JobState.PENDING
    assert [r.state for r in results] == [want] * len(jobs)
    await asyncio.sleep(0.1)
    assert worker.take_handed(worker_id) == []


async def test_a_job_enqueued_in_a_callers_transaction_is_not_handed(
    worker: PostgresEngine, producer: PostgresEngine, postgres_url: str
) -> None:
    """Its lease would start before a COMMIT that may come much later."""
    await go_idle(worker)
    async with await psycopg.AsyncConnection.connect(worker.conninfo) as conn:
        [res] = await producer.enqueue_in(conn, [new()])
        await conn.commit()
    assert res.state is JobState.PENDING
    assert [r[1] for r in await registrations(producer)] == ["w1"]  # still waiting
    # The pooled enqueue after it finds a job pending: that one goes first.
    [later] = await producer.enqueue([new()])
    assert later.state is JobState.PENDING


async def test_a_worker_whose_session_is_gone_is_never_handed_a_job(
    postgres_url: str, producer: PostgresEngine
) -> None:
    doomed = PostgresEngine(postgres_url)
    await doomed.connect()
    doomed.accept_handoffs("w1")
    await go_idle(doomed)
    assert [r[1] for r in await registrations(producer)] == ["w1"]
    await doomed.close()  # dies: no stop_handoffs, its registration is still there
    [res] = await producer.enqueue([new()])
    assert res.state is JobState.PENDING
    assert await registrations(producer) == []  # the dead registration was dropped
    # A live worker registering afterwards is handed the next job again (the queue's
    # `waiting` flag, reset when the dead one was dropped, is set by its registration).
    live = PostgresEngine(postgres_url)
    await live.connect()
    live.accept_handoffs("w2")
    try:
        got = await live.exchange([], queues=["q"], limit=5, worker_id="w2", lease_ms=30_000)
        assert [j.id for j in got.jobs] == [res.id]  # the pending one first
        await go_idle(live, "w2")
        [later] = await producer.enqueue([new()])
        assert later.state is JobState.RUNNING
        assert [j.id for j in await handed(live, "w2")] == [later.id]
    finally:
        await live.close()


async def test_a_job_handed_to_a_worker_that_died_before_taking_it_is_recovered(
    postgres_url: str, producer: PostgresEngine
) -> None:
    """Handed in the instant before the worker died: its lease expires and any worker's
    next exchange takes it back (attempt 2), as for any job claimed by a dead worker."""
    doomed = PostgresEngine(postgres_url)
    await doomed.connect()
    doomed.accept_handoffs("w1")
    await go_idle(doomed, lease_ms=300)
    [res] = await producer.enqueue([new()])
    assert res.state is JobState.RUNNING
    await doomed.close()  # never took it
    await asyncio.sleep(0.4)  # its lease expires
    got = await producer.exchange([], queues=["q"], limit=5, worker_id="w2", lease_ms=30_000)
    assert got.recovered == 1
    assert [(j.id, j.worker, j.attempt) for j in got.jobs] == [(res.id, "w2", 2)]


async def test_one_registration_is_handed_one_job_however_many_producers_race(
    worker: PostgresEngine, postgres_url: str
) -> None:
    await go_idle(worker, limit=1)  # room for one job
    producers = [PostgresEngine(postgres_url) for _ in range(4)]
    for p in producers:
        await p.connect()
    try:
        results = await asyncio.gather(*(p.enqueue([new()]) for p in producers))
    finally:
        for p in producers:
            await p.close()
    states = sorted(r[0].state.value for r in results)
    assert states.count("running") == 1, states
    [job] = await handed(worker)
    assert job.id in {r[0].id for r in results if r[0].state is JobState.RUNNING}
    # The others are pending, and an exchange (this worker's, another's) claims them.
    got = await worker.exchange([], queues=["q"], limit=10, worker_id="w1", lease_ms=30_000)
    assert len(got.jobs) == 3 and job.id not in {j.id for j in got.jobs}


async def test_a_registration_holds_the_room_the_worker_had(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    await go_idle(worker, limit=2)
    assert await registrations(producer) == [("q", "w1", 2)]
    first = (await producer.enqueue([new()]))[0]
    second = (await producer.enqueue([new()]))[0]
    third = (await producer.enqueue([new()]))[0]
    assert [first.state, second.state, third.state] == [
        JobState.RUNNING, JobState.RUNNING, JobState.PENDING,
    ]  # fmt: skip
    assert {j.id for j in await handed(worker, n=2)} == {first.id, second.id}
    # A claim that gets all it asked for drops the registration (the worker is busy).
    got = await worker.exchange([], queues=["q"], limit=1, worker_id="w1", lease_ms=30_000)
    assert [j.id for j in got.jobs] == [third.id]
    assert await registrations(producer) == []


async def test_stop_handoffs_gives_back_what_was_handed_and_ends_the_handing(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    # Whether the notification arrived yet or not, it comes back (read from the table).
    back = await worker.stop_handoffs("w1")
    assert [j.id for j in back] == [res.id]
    [later] = await producer.enqueue([new()])
    assert later.state is JobState.PENDING


async def test_jobs_handed_while_the_listener_was_away_are_taken_from_the_table(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    """A notification lost with the LISTEN connection: the reconnected listener reads the
    jobs handed to this engine's workers (and skips those already received)."""
    await go_idle(worker)
    [res] = await producer.enqueue([new()])
    [job] = await handed(worker)
    await worker._handed_missed()  # received already: not handed twice
    assert worker.take_handed("w1") == []
    worker._pickups["w1"].received.clear()  # as if its notification had been lost
    await worker._handed_missed()
    assert [j.id for j in worker.take_handed("w1")] == [res.id] == [job.id]


async def test_a_large_job_is_handed_by_id(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    """A row too large for a notification (8000 bytes): the worker reads it."""
    await go_idle(worker)
    payload = '{"blob": "' + "x" * 20_000 + '"}'
    [res] = await producer.enqueue([new(payload_json=payload)])
    assert res.state is JobState.RUNNING
    [job] = await handed(worker)
    assert (job.id, job.payload, job.attempt) == (res.id, {"blob": "x" * 20_000}, 1)


async def test_reporting_outcomes_keeps_an_idle_worker_registered(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    """An idle worker reports a finished job (an exchange with limit 0) and stays idle:
    the next job is still handed to it, not left to a wake-up and a second claim."""
    await go_idle(worker, limit=1)
    [first] = await producer.enqueue([new()])
    [job] = await handed(worker)
    await go_idle(worker, limit=1)  # the claim loop's next claim finds nothing: registered
    done = await worker.exchange(
        [Outcome(job.id, str(job.token), "complete", result_json="1")],
        queues=["q"], limit=0, worker_id="w1", lease_ms=30_000,
    )  # fmt: skip
    assert done.lost == []
    [second] = await producer.enqueue([new()])
    assert second.state is JobState.RUNNING
    assert [j.id for j in await handed(worker)] == [second.id]
    assert first.id == job.id


async def test_a_hand_off_and_its_outcome_are_on_disk_when_their_calls_return() -> None:
    """The hand-off, and an idle worker's exchange, commit without waiting for their WAL
    flush (migration 0014, queries.sql `exchange_waiting`), so a job reaches its worker
    at once and no hand-off waits behind the worker's flush; `enqueue` and `exchange`
    must still return only once what they wrote is durable.

    A private server whose WAL writer runs every 10 s writes nothing to disk for a commit
    that does not flush: killed right after the call returned, it would come back without
    the job (or with the job still running) unless the engine flushed before returning.
    """
    # Not tmp_path: the server runs as user postgres, who must reach its directory.
    directory = tempfile.TemporaryDirectory(prefix="conveyor-pg-crash-")
    server = PostgresServer(Path(directory.name))
    url = server.start_private("wal_writer_delay=10s") + "?schema=crash"

    async def after_a_crash(job_id: str) -> Job:
        server.crash()
        engine = PostgresEngine(url)
        try:
            return await engine.get_job(job_id)
        finally:
            await engine.close()

    try:
        # 1. The job is on disk when the enqueue that handed it returns.
        worker, producer = PostgresEngine(url), PostgresEngine(url)
        await worker.connect()
        await producer.connect()
        worker.accept_handoffs("w1")
        await go_idle(worker)
        [res] = await producer.enqueue([new()])
        assert res.created and res.state is JobState.RUNNING  # handed
        [job] = await handed(worker)
        await worker.close()
        await producer.close()
        stored = await after_a_crash(res.id)
        assert (stored.state, stored.token) == (JobState.RUNNING, job.token)
        # 2. Its outcome is on disk when the exchange that reported it returns.
        worker = PostgresEngine(url)
        await worker.connect()
        worker.accept_handoffs("w1")
        got = await worker.exchange(
            [Outcome(job.id, job.token or "", "complete", result_json="1")],
            queues=["q"], limit=5, worker_id="w1", lease_ms=30_000,
        )  # fmt: skip
        assert got.lost == [] and got.jobs == []
        await worker.close()
        stored = await after_a_crash(res.id)
        assert stored.state is JobState.COMPLETED
    finally:
        server.stop()
        directory.cleanup()
