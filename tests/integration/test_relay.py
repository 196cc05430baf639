"""The outbox relay: rows written in a Postgres transaction become exactly one job each
in Redis, with several relays at once, and never when the transaction rolled back.

(The SIGKILL test, relays killed again and again mid-stream, is in
tests/integration/test_relay_kill.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, JobState
from conveyor.engines import open_engine
from conveyor.engines.postgres import PostgresEngine, parse_postgres_url
from conveyor.relay import Relay
from conveyor.testing import eventually

pytestmark = pytest.mark.redis


@pytest.fixture
async def source(postgres_url: str) -> AsyncIterator[PostgresEngine]:
    eng = open_engine(postgres_url)
    assert isinstance(eng, PostgresEngine)
    await eng.connect()
    yield eng
    await eng.close()


@pytest.fixture
def app(redis_url: str) -> Conveyor:
    app = Conveyor(redis_url)

    @app.task("mail", queue="q")
    async def mail(job: object) -> None:
        return None

    return app


async def add_rows(source: PostgresEngine, app: Conveyor, n: int, *, commit: bool = True) -> None:
    async with await psycopg.AsyncConnection.connect(parse_postgres_url(source.url)[0]) as conn:
        await source.outbox_add_in(conn, [app.build("mail", {"i": i}) for i in range(n)])
        if commit:
            await conn.commit()
        else:
            await conn.rollback()


async def run_until_empty(relays: list[Relay], source: PostgresEngine) -> None:
    tasks = [asyncio.create_task(r.run()) for r in relays]

    async def empty() -> bool:
        return await source.outbox_lag_ms() is None

    await eventually(empty, timeout=60)
    for relay in relays:
        relay.stop()
    await asyncio.gather(*tasks)


async def test_three_relays_in_parallel_relay_every_row_once(
    source: PostgresEngine, app: Conveyor, postgres_url: str, redis_url: str
) -> None:
    await add_rows(source, app, 600)
    relays = [Relay(postgres_url, redis_url, batch=25) for _ in range(3)]
    await run_until_empty(relays, source)
    relayed = [int(r.relayed._value.get()) for r in relays]  # type: ignore[attr-defined]
    duplicates = [int(r.duplicates._value.get()) for r in relays]  # type: ignore[attr-defined]
    assert sum(relayed) == 600 and duplicates == [0, 0, 0], (relayed, duplicates)
    assert sum(1 for n in relayed if n) >= 2, "the relays shared the work"
    await app.connect()
    assert (await app.counts("q")).pending == 600
    payloads = {
        job.payload["i"] for job in (await app.list_jobs("q", JobState.PENDING, limit=600)).jobs
    }
    assert payloads == set(range(600))
    await app.close()


async def test_a_rolled_back_row_never_becomes_a_job(
    source: PostgresEngine, app: Conveyor, postgres_url: str, redis_url: str
) -> None:
    await add_rows(source, app, 5, commit=False)
    await add_rows(source, app, 2)
    relay = Relay(postgres_url, redis_url)
    await run_until_empty([relay], source)
    await app.connect()
    assert (await app.counts("q")).pending == 2
    await app.close()


async def test_a_resent_row_is_answered_with_the_job_it_already_made(
    source: PostgresEngine, app: Conveyor, redis_url: str
) -> None:
    """What a relay killed between the enqueue and its COMMIT leaves: the next one sends
    the same job ids again, and the target creates nothing new."""
    await add_rows(source, app, 3)
    target = open_engine(redis_url)
    await target.connect()
    sent: list[Any] = []

    async def send_then_die(jobs: Any) -> Any:
        sent.extend(jobs)
        await target.enqueue(jobs)
        raise ConnectionResetError("relay killed after the enqueue, before COMMIT")

    with pytest.raises(ConnectionResetError):
        await source.relay_batch(send_then_die)
    again = await source.relay_batch(target.enqueue)
    assert [r.id for r in again] == [j.id for j in sent] and not any(r.created for r in again)
    assert (await target.counts("q")).pending == 3
    assert await source.outbox_lag_ms() is None
    await target.close()


async def test_a_delay_counts_from_when_the_row_was_written(
    source: PostgresEngine, app: Conveyor, redis_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(parse_postgres_url(source.url)[0]) as conn:
        await source.outbox_add_in(conn, [app.build("mail", {}, delay=3600)])
        await conn.commit()
    target = open_engine(redis_url)
    [res] = await source.relay_batch(target.enqueue)
    job = await target.get_job(res.id)
    assert job.state == "scheduled" and job.dedupe_key and job.dedupe_key.startswith("outbox:")
    await target.close()


async def test_relay_health_and_lag_metric(
    source: PostgresEngine, app: Conveyor, postgres_url: str, redis_url: str
) -> None:
    import httpx

    from tests.conftest import free_port

    await add_rows(source, app, 3)
    port = free_port()
    relay = Relay(postgres_url, redis_url, health_port=port)
    lag = await relay.update_lag()
    assert lag >= 0
    task = asyncio.create_task(relay.run())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def served() -> bool:
            try:
                return (await client.get("/health/live")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(served)
        ready = await client.get("/health/ready")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get("/metrics")).text
        assert "conveyor_relay_lag_seconds" in metrics and "conveyor_relay_rows_total" in metrics
    relay.stop()
    await task
