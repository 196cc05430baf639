"""The Postgres engine's batch enqueue (`enqueue_batch`, migration 0015) against the JSON
`enqueue` it replaces for batches: the same batch, stored both ways in two schemas on one
fake clock, must leave the same jobs, events, tenants and queues and give the same answer
per job, whatever the batch holds (options per job, dedupe keys, ids that exist)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, Job
from conveyor.clock import FakeClock
from conveyor.engines import open_engine
from conveyor.engines.postgres import PostgresEngine, parse_postgres_url
from conveyor.engines.postgres.flow import jobs_document
from conveyor.job import EnqueueResult, JobState, NewJob
from tests.integration.test_postgres_engine import record_statements

NOW = 1_700_000_000.0
JOB_ROW = (
    "id, queue, task, payload, state, attempt, max_attempts, priority, tenant, dedupe_key, "
    "timeout_ms, backoff, created_ms, scheduled_ms"
)


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    eng = open_engine(postgres_url, clock=FakeClock(NOW))
    assert isinstance(eng, PostgresEngine)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
def reference(postgres_server: str) -> Iterator[Reference]:
    """A second schema, written by the JSON `enqueue` function directly."""
    from tests.postgres_server import drop_schema

    schema = f"tref{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        yield Reference(conn, schema)
    drop_schema(postgres_server, schema)


@pytest.fixture
async def migrated(reference: Reference, postgres_server: str) -> Reference:
    eng = open_engine(f"{postgres_server}?schema={reference.schema}")
    await eng.connect()  # migrates
    await eng.close()
    return reference


class Reference:
    """Stores batches as every batch was stored before 0015: one `enqueue(jsonb)` call."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str) -> None:
        self.conn, self.schema = conn, schema

    def enqueue(self, jobs: list[NewJob]) -> list[EnqueueResult]:
        rows = self.conn.execute(
            f'SELECT job_id, created, job_state FROM "{self.schema}".enqueue(%s::jsonb, %s)',
            (jobs_document(jobs), int(NOW * 1000)),
        ).fetchall()
        return [EnqueueResult(r[0], r[1], JobState(r[2])) for r in rows]


def stored(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a schema holds: jobs in FIFO order, events in order, tenants, queues."""
    s = f'"{schema}"'
    return {
        "jobs": conn.execute(f"SELECT {JOB_ROW} FROM {s}.jobs ORDER BY seq").fetchall(),
        "events": conn.execute(
            f"SELECT queue, kind, job_id, task, tenant, attempt, at_ms, data "
            f"FROM {s}.events ORDER BY id"
        ).fetchall(),
        "tenants": conn.execute(f"SELECT queue, tenant FROM {s}.tenants ORDER BY 1, 2").fetchall(),
        "queues": conn.execute(f"SELECT name, known FROM {s}.queues ORDER BY 1").fetchall(),
    }


async def both(
    engine: PostgresEngine, reference: Reference, postgres_url: str, jobs: list[NewJob]
) -> list[EnqueueResult]:
    """Store `jobs` both ways; assert the same answers and the same rows; the answers."""
    got = await engine.enqueue(jobs)
    assert got == reference.enqueue(jobs)
    schema = parse_postgres_url(postgres_url)[1]
    assert stored(reference.conn, schema) == stored(reference.conn, reference.schema)
    return got


def job(n: int, **fields: Any) -> NewJob:
    return NewJob(**{"id": f"q:{n:04d}", "queue": "q", "task": "t", "payload_json": "{}",
                     "max_attempts": 3, **fields})  # fmt: skip


async def test_a_plain_batch_is_made_pending_in_input_order(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    jobs = [job(n, payload_json=f'{{"n":{n},"s":"a\\"b"}}') for n in range(7)]
    got = await both(engine, migrated, postgres_url, jobs)
    assert got == [EnqueueResult(j.id, True, JobState.PENDING) for j in jobs]
    claimed = await engine.exchange([], queues=["q"], limit=10, worker_id="w", lease_ms=1000)
    assert [c.id for c in claimed.jobs] == [j.id for j in jobs]


async def test_options_that_differ_per_job_are_stored_per_job(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    now_ms = int(NOW * 1000)
    jobs = [
        job(0),
        job(1, queue="other", task="u", priority=5, tenant="acme", max_attempts=1),
        job(2, delay_ms=5_000, timeout=1.5, backoff_json='{"kind":"fixed","delay":2}'),
        job(3, run_at_ms=now_ms - 1_000, tenant="acme"),  # due already: pending
        job(4, run_at_ms=now_ms + 60_000, priority=-3, tenant="zed", timeout=0.25),
        job(5, queue="other", tenant="acme"),
    ]
    got = await both(engine, migrated, postgres_url, jobs)
    states = [r.state for r in got]
    assert states == ["pending", "pending", "scheduled", "pending", "scheduled", "pending"]


async def test_ids_holding_the_separator_are_split_right(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    """Ids are opaque to the engine: one holding the record separator the batch joins
    ids with (and the private-use character tried next) is stored as it is."""
    jobs = [job(0), job(1, id="q:a\x1eb"), job(2, id="q:\ue000\x1e"), job(3)]
    got = await both(engine, migrated, postgres_url, jobs)
    assert [r.id for r in got] == [j.id for j in jobs]


async def test_a_batch_sharing_one_non_default_value_sends_it_once(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    """Every job with the same tenant, priority, timeout, delay: stored for each job."""
    same = {"tenant": "acme", "priority": 7, "timeout": 2.0, "delay_ms": 10, "queue": "x"}
    await both(engine, migrated, postgres_url, [job(n, **same) for n in range(4)])


async def test_dedupe_keys_in_a_batch_answer_as_before(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    first = [job(0, dedupe_key="held")]
    await both(engine, migrated, postgres_url, first)
    jobs = [
        job(1, dedupe_key="held"),  # a live job holds it: that job answers
        job(2, dedupe_key="twice"),
        job(3, dedupe_key="twice"),  # the job just before in this batch holds it
        job(4),
    ]
    got = await both(engine, migrated, postgres_url, jobs)
    assert [(r.id, r.created) for r in got] == [
        ("q:0000", False), ("q:0002", True), ("q:0002", False), ("q:0004", True),
    ]  # fmt: skip


async def test_ids_that_exist_answer_with_their_job_and_the_rest_is_made(
    engine: PostgresEngine, migrated: Reference, postgres_url: str
) -> None:
    """A fixed id stored again (a scheduled occurrence's): the plain INSERT fails, its
    rows are rolled back, and the batch is decided job by job."""
    await both(engine, migrated, postgres_url, [job(0), job(1, delay_ms=1_000)])
    got = await both(engine, migrated, postgres_url, [job(5), job(1), job(6), job(0)])
    assert [(r.id, r.created, r.state) for r in got] == [
        ("q:0005", True, "pending"), ("q:0001", False, "scheduled"),
        ("q:0006", True, "pending"), ("q:0000", False, "pending"),
    ]  # fmt: skip
    again = await both(engine, migrated, postgres_url, [job(5), job(6)])
    assert not any(r.created for r in again)


async def test_a_batch_is_one_statement_and_one_row(
    engine: PostgresEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_statements(monkeypatch)
    await engine.enqueue([job(n) for n in range(1000)])
    assert len(sent) == 1 and "enqueue_batch(" in sent[0]


async def test_a_batch_writes_no_event_for_a_queue_without_events(postgres_url: str) -> None:
    """Lifecycle rule 7 holds for a batch that mixes a quiet queue and a loud one."""
    app = Conveyor(postgres_url)
    app.limits("quiet", events=False)

    @app.task("hush", queue="quiet")
    async def hush(job: Job) -> None: ...

    @app.task("shout", queue="loud")
    async def shout(job: Job) -> None: ...

    await app.connect()
    try:
        jobs = await app.enqueue_many(
            [{"task": "hush", "payload": {"n": n}} for n in range(3)]
            + [{"task": "shout", "payload": {"n": n}} for n in range(2)]
        )
        assert [j.state for j in jobs] == ["pending"] * 5
    finally:
        await app.close()
    schema = parse_postgres_url(postgres_url)[1]
    with psycopg.connect(parse_postgres_url(postgres_url)[0], autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT queue, kind, job_id FROM "{schema}".events ORDER BY id'
        ).fetchall()
        counts = conn.execute(f'SELECT queue, count(*) FROM "{schema}".jobs GROUP BY 1').fetchall()
    assert rows == [("loud", "enqueued", jobs[3].id), ("loud", "enqueued", jobs[4].id)]
    assert dict(counts) == {"quiet": 3, "loud": 2}
