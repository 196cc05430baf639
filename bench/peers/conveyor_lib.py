"""Conveyor peer: asyncio worker, one exchange (acks + claims) per round trip.

Idiomatic settings: the worker CLI with its defaults (leases 30 s, completed jobs kept,
like BullMQ's default rather than removeOnComplete), concurrency 50 for noop jobs
(claims are batched by free slots, so more slots = bigger batches) and 100 for io.

W5 (fairness cost): with ``BENCH_TENANTS`` > 0 job i gets tenant ``t{i % BENCH_TENANTS}`` and
the producer stores ``tenant_concurrency=BENCH_TENANT_CONCURRENCY`` on the queue before it
enqueues; the workers pick the limit up from the engine.
"""

from __future__ import annotations

import itertools
import os

from conveyor import Conveyor, Job
from peers._common import QUEUE, mark_done_async, redis_url

NAME = "conveyor"
REQUIREMENTS = ["-e", "{repo}"]  # editable: a run measures the checkout as it is
VERSION_PACKAGES = ["conveyor-jobs", "redis", "hiredis"]
BULK = "app.enqueue_many(items) (one Lua call per 250 jobs)"
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
WORKER_ARGV_CPU = [
    "{bin}/conveyor",
    "worker",
    "peers.conveyor_lib:app",
    "--url",
    "{url}",
    "--queues",
    "{queue}",
    "--pool",
    "process",
    "--processes",
    "{concurrency}",
    "--health-port",
    "0",
    "--log-level",
    "WARNING",
]
CPU = "conveyor worker --pool process --processes 2 (one worker, 2 child processes)"
PROCESSES = "spawn"
CONCURRENCY = {"noop": 50, "io": 100, "cpu": 2}
NOTES = {
    "noop": "conveyor worker --concurrency 50 (per process), completed jobs kept",
    "io": "conveyor worker --concurrency 100, asyncio.sleep(0.02)",
}
FAIRNESS = (
    "enqueue(..., tenant=f't{i % 100}') and app.set_limits(queue, tenant_concurrency=2): "
    "the claim enforces the limit and serves tenants least recently served first"
)

TENANTS = int(os.environ.get("BENCH_TENANTS", "0"))
TENANT_CONCURRENCY = int(os.environ.get("BENCH_TENANT_CONCURRENCY", "0"))
_sequence = itertools.count()  # job i of this producer, across enqueue and enqueue_bulk


def make_app(url: str) -> Conveyor:
    """The benchmark app on the engine at `url` (conveyor_sqlite builds it on SQLite)."""
    app = Conveyor(url)

    @app.task("job", queue=QUEUE, max_attempts=1)
    async def job(job: Job) -> None:
        await mark_done_async(int(job.payload["t"]), int(job.payload["s"]))

    return app


app = make_app(redis_url())


def _tenant() -> dict[str, str]:
    """The enqueue options of the next job: its tenant in W5, none otherwise."""
    i = next(_sequence)
    return {"tenant": f"t{i % TENANTS}"} if TENANTS > 0 else {}


async def prepare(client: Conveyor) -> Conveyor:
    """Connect; in W5 store the tenant limit first, so no job is ever claimed without it."""
    await client.connect()
    if TENANTS > 0:
        await client.set_limits(QUEUE, tenant_concurrency=TENANT_CONCURRENCY)
    return client


async def connect() -> Conveyor:
    return await prepare(app)


async def enqueue(client: Conveyor, t: int, s: int) -> None:
    await client.enqueue("job", {"t": t, "s": s}, **_tenant())


async def enqueue_bulk(client: Conveyor, items: list[tuple[int, int]]) -> None:
    for i in range(0, len(items), 1000):
        await client.enqueue_many(
            [
                {"task": "job", "payload": {"t": t, "s": s}, **_tenant()}
                for t, s in items[i : i + 1000]
            ]
        )


async def close(client: Conveyor) -> None:
    await client.close()
