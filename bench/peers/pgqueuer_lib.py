"""pgqueuer peer: asyncio, jobs in Postgres (asyncpg), LISTEN/NOTIFY wake-ups.

Durable defaults: a job row is committed on enqueue, deleted on completion and its outcome
written to ``pgqueuer_log`` in the same transaction. The schema is installed once per run by
``setup()`` (``Queries.install()``, what ``pgq install`` does) in the run's database.
"""

from __future__ import annotations

import os

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from peers._common import mark_done_async

NAME = "pgqueuer"
# redis: the completion marker (peers/_common.py imports redis-py).
REQUIREMENTS = ["pgqueuer==1.6.0", "asyncpg==0.32.0", "redis==8.1.0"]
VERSION_PACKAGES = ["pgqueuer", "asyncpg"]
BULK = "Queries.enqueue(list of entrypoints, list of payloads, list of priorities) per 1,000 jobs"
ENGINE_URL = "{pg_url}"
WORKER_ARGV = [
    "{bin}/pgq",
    "run",
    "peers.pgqueuer_lib:create",
    "--max-concurrent-tasks",
    "{concurrency}",
    "--log-level",
    "WARNING",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "pgq run --max-concurrent-tasks 10 (batch size 10, its default)",
    "io": "pgq run --max-concurrent-tasks 100, asyncio.sleep(0.02)",
}
WORKLOADS = ["W0", "W1", "W2", "W3"]
SETTLE_S = 1.0


def _dsn() -> str:
    return os.environ.get("BENCH_ENGINE_URL", "postgresql://postgres@127.0.0.1/postgres")


def _decode(payload: bytes | None) -> tuple[int, int]:
    t, s = (payload or b"0 0").split()
    return int(t), int(s)


async def create() -> PgQueuer:
    """The worker's factory (``pgq run peers.pgqueuer_lib:create``)."""
    driver = AsyncpgDriver(await asyncpg.connect(_dsn()))
    pgq = PgQueuer(driver)

    @pgq.entrypoint("job")
    async def job(job: Job) -> None:
        await mark_done_async(*_decode(job.payload))

    return pgq


async def setup() -> None:
    conn = await asyncpg.connect(_dsn())
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.has_table("pgqueuer"):
            await queries.install()
    finally:
        await conn.close()


async def connect() -> Queries:
    queries = Queries(AsyncpgDriver(await asyncpg.connect(_dsn())))
    # FLUSHALL does not reach Postgres: start every measurement from an empty queue.
    await queries.clear_queue()
    await queries.clear_queue_log()
    return queries


async def enqueue(q: Queries, t: int, s: int) -> None:
    await q.enqueue("job", f"{t} {s}".encode())


async def enqueue_bulk(q: Queries, items: list[tuple[int, int]]) -> None:
    for i in range(0, len(items), 1000):
        chunk = items[i : i + 1000]
        await q.enqueue(
            ["job"] * len(chunk), [f"{t} {s}".encode() for t, s in chunk], [0] * len(chunk)
        )


async def close(q: Queries) -> None:
    await q.driver.connection.close()  # type: ignore[attr-defined]
