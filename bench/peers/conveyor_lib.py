"""Conveyor peer: asyncio worker, one exchange (acks + claims) per round trip.

Idiomatic settings: the worker CLI with its defaults (leases 30 s, completed jobs kept,
like BullMQ's default rather than removeOnComplete), concurrency 50 for noop jobs
(claims are batched by free slots, so more slots = bigger batches) and 100 for io.
"""

from __future__ import annotations

from conveyor import Conveyor, Job
from peers._common import QUEUE, mark_done_async, redis_url

NAME = "conveyor"
REQUIREMENTS = ["-e", "{repo}"]  # editable: a run measures the checkout as it is
VERSION_PACKAGES = ["conveyor-jobs", "redis", "hiredis"]
BULK = "app.enqueue_many(items) (one Lua call per 1,000 jobs)"
WORKER_ARGV = [
    "{bin}/conveyor",
    "worker",
    "peers.conveyor_lib:app",
    "--url",
    "{url}",
    "--queues",
    "{queue}",
    "--concurrency",
    "{concurrency}",
    "--health-port",
    "0",
    "--log-level",
    "WARNING",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 50, "io": 100}
NOTES = {
    "noop": "conveyor worker --concurrency 50 (per process), completed jobs kept",
    "io": "conveyor worker --concurrency 100, asyncio.sleep(0.02)",
}

app = Conveyor(redis_url())


@app.task("job", queue=QUEUE, max_attempts=1)
async def job(job: Job) -> None:
    await mark_done_async(int(job.payload["t"]), int(job.payload["s"]))


async def connect() -> Conveyor:
    await app.connect()
    return app


async def enqueue(client: Conveyor, t: int, s: int) -> None:
    await client.enqueue("job", {"t": t, "s": s})


async def enqueue_bulk(client: Conveyor, items: list[tuple[int, int]]) -> None:
    for i in range(0, len(items), 1000):
        await client.enqueue_many(
            [{"task": "job", "payload": {"t": t, "s": s}} for t, s in items[i : i + 1000]]
        )


async def close(client: Conveyor) -> None:
    await client.close()
