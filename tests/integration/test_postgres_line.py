"""The Postgres engine's held line (engines/postgres/line.py): a sequential producer's
single enqueues run on one connection kept out of the pool, and anything the line cannot
do goes through the pool as before, without losing or doubling a job."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from conveyor import Conveyor
from conveyor.engines import open_engine
from conveyor.engines.postgres import PostgresEngine, parse_postgres_url

pytestmark = pytest.mark.usefixtures("postgres_url")


@pytest.fixture
async def app(postgres_url: str) -> AsyncIterator[Conveyor]:
    app = Conveyor(postgres_url)

    @app.task("t", queue="q")
    async def t(job: object) -> None:
        return None

    await app.connect()
    yield app
    await app.close()


def engine_of(app: Conveyor) -> PostgresEngine:
    engine = app.engine
    assert isinstance(engine, PostgresEngine)
    return engine


async def count_jobs(postgres_url: str) -> int:
    conninfo, schema = parse_postgres_url(postgres_url)
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cur = await conn.execute(f'SELECT count(*) FROM "{schema}".jobs')
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_a_sequential_producer_uses_one_held_connection(
    app: Conveyor, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await app.enqueue("t", {"i": 0})  # takes the line (and checks the queue)
    line = engine_of(app)._line
    assert line is not None
    checkouts: list[object] = []
    real = AsyncConnectionPool.getconn

    async def counting(self: AsyncConnectionPool[Any], *a: Any, **k: Any) -> Any:
        conn = await real(self, *a, **k)
        checkouts.append(conn)
        return conn

    monkeypatch.setattr(AsyncConnectionPool, "getconn", counting)
    jobs = [first] + [await app.enqueue("t", {"i": i}) for i in range(1, 20)]
    assert checkouts == [], "no pool round after the first enqueue"
    assert engine_of(app)._line is line and not line.closed
    assert [(await app.get_job(j.id)).state for j in jobs] == ["pending"] * 20
    assert [(await app.get_job(j.id)).payload for j in jobs] == [{"i": i} for i in range(20)]
    assert await count_jobs(postgres_url) == 20


async def test_concurrent_enqueues_go_through_the_pool_while_the_line_is_busy(
    app: Conveyor, postgres_url: str
) -> None:
    await app.enqueue("t", {})  # the line exists
    jobs = await asyncio.gather(*(app.enqueue("t", {"i": i}) for i in range(30)))
    assert len({j.id for j in jobs}) == 30
    assert await count_jobs(postgres_url) == 31


async def test_a_killed_line_is_replaced_without_losing_or_doubling_a_job(
    app: Conveyor, postgres_url: str
) -> None:
    """pg_terminate_backend of the line's session (a failover, an admin): the next
    enqueue still stores its job once (through the pool), and a new line follows."""
    await app.enqueue("t", {})
    engine = engine_of(app)
    first = engine._line
    assert first is not None
    async with await psycopg.AsyncConnection.connect(
        parse_postgres_url(postgres_url)[0], autocommit=True
    ) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (first.conn.pgconn.backend_pid,))
    jobs = [await app.enqueue("t", {"i": i}) for i in range(3)]
    assert first.closed
    assert engine._line is not None and engine._line is not first
    assert await count_jobs(postgres_url) == 4
    assert {(await app.get_job(j.id)).state for j in jobs} == {"pending"}


async def test_a_failed_statement_leaves_the_line_usable(app: Conveyor) -> None:
    """An error result answers None (the caller reruns it through the pool, where
    psycopg raises the error); the session is fine, so the line stays."""
    await app.enqueue("t", {})
    engine = engine_of(app)
    line = engine._line
    assert await engine._held_rows("SELECT 1 / %s::int", (0,)) is None
    assert await engine._held_rows("SELECT %s::int + 1, %s::text IS NULL", (41, None)) == [
        ("42", "t")
    ]
    assert engine._line is line and line is not None and not line.closed


async def test_enqueue_is_idempotent_by_id_so_a_rerun_is_safe(app: Conveyor) -> None:
    """What the fallback relies on: the same job stored twice is one job."""
    engine = engine_of(app)
    new = app.build("t", {"a": 1})
    [first] = await engine.enqueue([new])
    [again] = await engine.enqueue([new])
    assert first.created and not again.created and again.id == first.id


async def test_a_cancelled_call_closes_the_line_and_the_next_gets_a_new_one(
    app: Conveyor,
) -> None:
    await app.enqueue("t", {})
    engine = engine_of(app)
    line = engine._line
    assert line is not None
    call = asyncio.ensure_future(engine._held_rows("SELECT pg_sleep(%s)", (0.5,)))
    await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert line.closed
    job = await app.enqueue("t", {})
    assert (await app.get_job(job.id)).state == "pending"
    assert engine._line is not None and engine._line is not line


async def test_closing_the_engine_returns_the_line_to_the_pool(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    assert isinstance(engine, PostgresEngine)
    app = Conveyor(postgres_url)
    app.task("t", queue="q")(lambda job: None)
    await engine.connect()
    await engine.enqueue([app.build("t", {})])
    line = engine._line
    assert line is not None
    await engine.close()
    assert line.closed and engine._line is None
    assert line.conn.closed, "the pool closed it"
