"""pgqueuer peer: asyncio, jobs in Postgres (asyncpg), LISTEN/NOTIFY wake-ups.

Durable defaults: a job row is committed on enqueue, deleted on completion and its outcome
written to ``pgqueuer_log`` in the same transaction. The schema is installed once per run by
``setup()`` (``Queries.install()``, what ``pgq install`` does) in the run's database.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

import asyncpg
import pgqueuer
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries

from peers._common import concurrency, mark_done_async

NAME = "pgqueuer"
# redis: the completion marker (peers/_common.py imports redis-py).
REQUIREMENTS = ["pgqueuer==1.6.0", "asyncpg==0.32.0", "redis==8.1.0"]
VERSION_PACKAGES = ["pgqueuer", "asyncpg"]
BULK = "Queries.enqueue(list of entrypoints, list of payloads, list of priorities) per 1,000 jobs"
ENGINE_URL = "{pg_url}"
# pgqueuer.run(), what `pgq run` does, without its CLI: `pgq run` 1.6.0 crashes at start-up
# with typer 0.29 (setup_fancy_logger gets the --log-level string, not its LogLevel enum).
WORKER_ARGV = ["{python}", "-m", "peers._runner", "pgqueuer_lib", "worker"]
PROCESSES = "spawn"
# 20, not 10, for noop: pgqueuer refuses max_concurrent_tasks below twice its batch size,
# and its default batch (10) is kept.
CONCURRENCY = {"noop": 20, "io": 100}
NOTES = {
    "noop": "pgqueuer.run(max_concurrent_tasks=20), batch size 10 (its default)",
    "io": "pgqueuer.run(max_concurrent_tasks=100), asyncio.sleep(0.02)",
}
WORKLOADS = ["W0", "W1", "W2", "W3"]
SETTLE_S = 1.0


def _dsn() -> str:
    return os.environ.get("BENCH_ENGINE_URL", "postgresql://postgres@127.0.0.1/postgres")


def _decode(payload: bytes | None) -> tuple[int, int]:
    t, s = (payload or b"0 0").split()
    return int(t), int(s)


@contextlib.asynccontextmanager
async def create() -> AsyncIterator[PgQueuer]:
    """The worker's factory (what ``pgq run peers.pgqueuer_lib:create`` would load; pgqueuer
    1.6 wants an async context manager)."""
    conn = await asyncpg.connect(_dsn())
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("job")
    async def job(job: Job) -> None:
        await mark_done_async(*_decode(job.payload))

    try:
        yield pgq
    finally:
        await conn.close()


async def worker_main() -> None:
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    await pgqueuer.run(create, max_concurrent_tasks=concurrency())


async def setup() -> None:
    conn = await asyncpg.connect(_dsn())
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.has_table("pgqueuer"):
            await queries.install()
    finally:
        await conn.close()


_connections: list[asyncpg.Connection] = []


async def connect() -> Queries:
    _connections.append(await asyncpg.connect(_dsn()))
    queries = Queries(AsyncpgDriver(_connections[-1]))
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
    while _connections:
        await _connections.pop().close()
