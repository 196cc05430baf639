"""procrastinate peer: asyncio, jobs in Postgres (psycopg 3), LISTEN/NOTIFY wake-ups.

Durable defaults: finished jobs stay in ``procrastinate_jobs`` with their status (the
worker's ``--delete-jobs`` default is ``never``). The schema is applied once per run by
``setup()`` (what ``procrastinate schema --apply`` does) in the run's database.
"""

from __future__ import annotations

import os

import procrastinate

from peers._common import QUEUE, mark_done_async

NAME = "procrastinate"
# redis: the completion marker (peers/_common.py imports redis-py).
REQUIREMENTS = ["procrastinate==3.10.0", "psycopg[binary,pool]==3.3.9", "redis==8.1.0"]
VERSION_PACKAGES = ["procrastinate", "psycopg"]
BULK = "task.batch_defer_async(*kwargs) per 1,000 jobs (one INSERT each)"
ENGINE_URL = "{pg_url}"
WORKER_ARGV = [
    "{bin}/procrastinate",
    "--app=peers.procrastinate_lib.app",
    "--log-level=warning",
    "worker",
    "--queues={queue}",
    "--concurrency={concurrency}",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "procrastinate worker --concurrency 10, finished jobs kept (its default)",
    "io": "procrastinate worker --concurrency 100, asyncio.sleep(0.02)",
}
WORKLOADS = ["W0", "W1", "W2", "W3"]
# ~10² jobs/s on the 2-core reference machine: 20,000 jobs would take minutes per run.
MAX_BURST = 5000

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get("BENCH_ENGINE_URL", "postgresql://postgres@127.0.0.1/postgres")
    )
)


@app.task(name="job", queue=QUEUE)
async def job(t: int, s: int) -> None:
    await mark_done_async(t, s)


async def setup() -> None:
    async with app.open_async():
        try:
            await app.schema_manager.apply_schema_async()
        except Exception as exc:  # already applied in this run's database
            if "already exists" not in str(exc):
                raise


async def connect() -> procrastinate.App:
    await app.open_async()
    # FLUSHALL does not reach Postgres: start every measurement from an empty table.
    await app.connector.execute_query_async("TRUNCATE procrastinate_jobs CASCADE")
    return app


async def enqueue(client: procrastinate.App, t: int, s: int) -> None:
    await job.defer_async(t=t, s=s)


async def enqueue_bulk(client: procrastinate.App, items: list[tuple[int, int]]) -> None:
    for i in range(0, len(items), 1000):
        await job.batch_defer_async(*({"t": t, "s": s} for t, s in items[i : i + 1000]))


async def close(client: procrastinate.App) -> None:
    await client.close_async()
