"""Transactional enqueue through the app: `enqueue(..., connection=conn)` and
`enqueue_sync(..., connection=conn)` join the caller's psycopg transaction; the job
exists only if it commits, and no worker ever sees a rolled-back one. Also the outbox
(`app.outbox(conn).add(...)`), whose rows the relay turns into jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conveyor import ConfigError, Conveyor, Job, JobNotFound, UnknownTask, Worker
from conveyor.engines.postgres import parse_postgres_url
from conveyor.testing import eventually

from .contract.helpers import settled_events


@pytest.fixture
async def app(postgres_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(postgres_url)
    app.ran = []  # type: ignore[attr-defined]

    @app.task("order.mail", queue="orders")
    async def mail(job: Job) -> None:
        app.ran.append(job.payload["order"])  # type: ignore[attr-defined]

    await app.connect()
    yield app
    await app.close()


def dsn(app: Conveyor) -> str:
    return parse_postgres_url(app.url)[0]


async def test_a_committed_enqueue_runs_and_a_rolled_back_one_is_never_seen(
    app: Conveyor,
) -> None:
    worker = Worker(app, queues=("orders",), concurrency=4, health_port=0)
    running = asyncio.create_task(worker.run())
    try:
        async with await psycopg.AsyncConnection.connect(dsn(app)) as conn:
            # The caller's business transaction fails after the enqueue: rolled back.
            await conn.execute("SELECT 1")
            job = await app.enqueue("order.mail", {"order": "rolled-back"}, connection=conn)
            assert job.state == "pending"
            await conn.rollback()
            # Then one that commits: the worker is woken by the NOTIFY at COMMIT.
            kept = await app.enqueue("order.mail", {"order": "kept"}, connection=conn)
            await conn.commit()

        async def ran() -> bool:
            return (await app.get_job(kept.id)).state == "completed"

        await eventually(ran, message="the committed job ran")
        with pytest.raises(JobNotFound):
            await app.get_job(job.id)
        assert (await app.counts("orders")).completed == 1
    finally:
        worker.stop()
        await running
    assert app.ran == ["kept"], "no worker ever ran the rolled-back job"  # type: ignore[attr-defined]


async def test_an_uncommitted_job_is_invisible_but_dedupes_inside_its_transaction(
    app: Conveyor,
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn(app)) as conn:
        first = await app.enqueue("order.mail", {"order": 1}, dedupe_key="o1", connection=conn)
        again = await app.enqueue("order.mail", {"order": 1}, dedupe_key="o1", connection=conn)
        assert again.id == first.id, "the holder, read through the caller's transaction"
        with pytest.raises(JobNotFound):
            await app.get_job(first.id)  # not committed: nobody else sees it
        await conn.commit()
    assert (await app.get_job(first.id)).dedupe_key == "o1"


def test_enqueue_sync_joins_a_sync_transaction(postgres_url: str) -> None:
    app = Conveyor(postgres_url)

    @app.task("order.mail", queue="orders")
    async def mail(job: Job) -> None:
        return None

    try:
        with psycopg.connect(parse_postgres_url(postgres_url)[0]) as conn:
            with conn.transaction():
                kept = app.enqueue_sync("order.mail", {"order": 1}, connection=conn)
            lost: list[Job] = []

            def business() -> None:
                with conn.transaction():
                    lost.append(app.enqueue_sync("order.mail", {"order": 2}, connection=conn))
                    raise RuntimeError("rolled back")

            with pytest.raises(RuntimeError, match="rolled back"):
                business()
        assert app.get_job_sync(kept.id).state == "pending"
        with pytest.raises(JobNotFound):
            app.get_job_sync(lost[0].id)
    finally:
        asyncio.run(app.close())


async def test_connection_needs_a_postgres_engine(app: Conveyor, redis_url: str) -> None:
    other = Conveyor("memory://")
    async with await psycopg.AsyncConnection.connect(dsn(app)) as conn:
        with pytest.raises(ConfigError, match="postgresql://"):
            await other.enqueue("order.mail", {"order": 1}, queue="orders", connection=conn)
    await other.close()


async def test_outbox_rows_exist_only_if_the_transaction_commits(
    app: Conveyor, postgres_url: str
) -> None:
    schema = parse_postgres_url(postgres_url)[1]
    async with await psycopg.AsyncConnection.connect(dsn(app)) as conn:
        box = app.outbox(conn, schema=schema)
        first = await box.add("order.mail", {"order": 1})
        await conn.commit()
        await box.add("order.mail", {"order": 2})
        await conn.rollback()
        with pytest.raises(UnknownTask):
            await box.add("no.such.task", {})
        cur = await conn.execute(f'SELECT id, job FROM "{schema}".outbox')
        rows: list[Any] = await cur.fetchall()
    assert [r[0] for r in rows] == [first] and '"order\\":1' in rows[0][1].replace(" ", "")


def test_outbox_with_a_sync_connection(app: Conveyor, postgres_url: str) -> None:
    schema = parse_postgres_url(postgres_url)[1]
    with psycopg.connect(dsn(app)) as conn:
        row_id = app.outbox(conn, schema=schema).add("order.mail", {"order": 3})
        conn.commit()
        assert conn.execute(f'SELECT count(*) FROM "{schema}".outbox').fetchone() == (1,)
    assert isinstance(row_id, int)


async def test_a_connection_with_its_own_row_factory_works(
    app: Conveyor, postgres_url: str
) -> None:
    """Applications often set dict rows on their connection; Conveyor reads its own
    rows as tuples whatever the connection's default."""
    from psycopg.rows import dict_row

    schema = parse_postgres_url(postgres_url)[1]
    async with await psycopg.AsyncConnection.connect(dsn(app), row_factory=dict_row) as conn:
        first = await app.enqueue("order.mail", {"order": 9}, dedupe_key="o9", connection=conn)
        again = await app.enqueue("order.mail", {"order": 9}, dedupe_key="o9", connection=conn)
        row_id = await app.outbox(conn, schema=schema).add("order.mail", {"order": 9})
        await conn.commit()
    assert again.id == first.id and isinstance(row_id, int)


async def test_a_quiet_queue_writes_no_event_through_the_callers_connection(
    app: Conveyor,
) -> None:
    """Rule 7 holds for a job written on the caller's own connection (which the app's
    pool never told its quiet queues): inside a transaction, where the loud job written
    next to it keeps its event, and in autocommit."""
    app.limits("quiet", events=False)
    start = await app.engine.last_event_ids(["quiet", "orders"])
    async with await psycopg.AsyncConnection.connect(dsn(app)) as conn:
        hushed = await app.enqueue("order.mail", {"order": 1}, queue="quiet", connection=conn)
        loud = await app.enqueue("order.mail", {"order": 2}, connection=conn)
        await conn.commit()
        await conn.set_autocommit(True)
        alone = await app.enqueue("order.mail", {"order": 3}, queue="quiet", connection=conn)
    with psycopg.connect(dsn(app), autocommit=True) as sync_conn:
        synced = await asyncio.to_thread(
            app.enqueue_sync, "order.mail", {"order": 4}, queue="quiet", connection=sync_conn
        )
    for job in (hushed, alone, synced):
        assert (await app.get_job(job.id)).state == "pending"
    events = await settled_events(app.engine, start, 1, ("quiet", "orders"))
    assert [(e.queue, e.kind, e.job_id) for e in events] == [("orders", "enqueued", loud.id)]
