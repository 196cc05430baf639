"""The one-hop pickup on Postgres (engines/postgres/pickup.py, migration 0011), what only
Postgres has: registrations in `waiting` and their room, racing producers, liveness (a
worker whose session is gone is never handed a job), jobs handed while the listener was
away, large rows, transactional enqueue, durability at return. What every engine that
hands jobs over gives is in test_handoffs.py.

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

from conveyor.engines.base import Outcome
from conveyor.engines.postgres import PostgresEngine
from conveyor.job import Job, JobState
from tests.postgres_server import PostgresServer

from .handoffs import go_idle, handed, new


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


async def registrations(engine: PostgresEngine) -> list[tuple[str, str, int]]:
    async def read(conn: object) -> list[tuple[str, str, int]]:
        cur = await conn.execute(  # type: ignore[attr-defined]
            f"SELECT queue, worker, room FROM {engine.schema_sql}.waiting ORDER BY worker"
        )
        return [(str(q), str(w), int(r)) for q, w, r in await cur.fetchall()]

    return await engine._run(read, single=True)


async def test_an_older_pending_job_goes_first(
    worker: PostgresEngine, producer: PostgresEngine
) -> None:
    """FIFO: a job that is pending already (committed in a caller's transaction, which is
    never handed) is claimed before a newer one could be handed. (The rules every engine
    holds back the same way are in test_handoffs.py.)"""
    await go_idle(worker)
    async with await psycopg.AsyncConnection.connect(producer.conninfo) as conn:
        await producer.enqueue_in(conn, [new()])
        await conn.commit()
    [res] = await producer.enqueue([new()])
    assert res.state is JobState.PENDING
    await asyncio.sleep(0.1)
    assert worker.take_handed("w1") == []


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
