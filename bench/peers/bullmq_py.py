"""BullMQ Python port peer: asyncio Worker, removeOnComplete (BullMQ's production advice)."""

from __future__ import annotations

import asyncio
from typing import Any

from bullmq import Queue, Worker

from peers._common import QUEUE, concurrency, mark_done_async, redis_url

NAME = "bullmq-py"
REQUIREMENTS = ["bullmq==3.4.4", "redis[hiredis]"]
VERSION_PACKAGES = ["bullmq", "redis"]
BULK = "Queue.addBulk(jobs)"
WORKER_ARGV = ["{python}", "-m", "peers._runner", "bullmq_py", "worker"]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "Worker(concurrency=10), removeOnComplete=True",
    "io": "Worker(concurrency=100), asyncio.sleep(0.02)",
}

OPTS = {"removeOnComplete": True}


async def process(job: Any, token: str) -> None:
    await mark_done_async(int(job.data["t"]), int(job.data["s"]))


async def worker_main() -> None:
    worker = Worker(QUEUE, process, {"connection": redis_url(), "concurrency": concurrency()})
    try:
        await asyncio.Event().wait()
    finally:
        await worker.close()


async def connect() -> Queue:
    return Queue(QUEUE, {"connection": redis_url()})


async def enqueue(q: Queue, t: int, s: int) -> None:
    await q.add("job", {"t": t, "s": s}, OPTS)


async def enqueue_bulk(q: Queue, items: list[tuple[int, int]]) -> None:
    await q.addBulk([{"name": "job", "data": {"t": t, "s": s}, "opts": OPTS} for t, s in items])


async def close(q: Queue) -> None:
    await q.close()
