"""SAQ peer: asyncio, Redis queue, in-process concurrency."""

from __future__ import annotations

from typing import Any

from saq import Queue

from peers._common import QUEUE, concurrency, mark_done_async, redis_url

NAME = "saq"
# saq 0.26.4 imports typing_extensions without declaring it.
REQUIREMENTS = ["saq[redis,hiredis]==0.26.4", "typing_extensions"]
VERSION_PACKAGES = ["saq", "redis"]
BULK = None  # Queue.map() waits for results and Queue.batch() is about atomicity, not speed
WORKER_ARGV = ["{bin}/saq", "peers.saq_lib.settings", "--workers", "{processes}"]
PROCESSES = "native"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "saq --workers P, concurrency=10 per process",
    "io": "saq --workers 1, concurrency=100, asyncio.sleep(0.02)",
}

queue = Queue.from_url(redis_url(), name=QUEUE)


async def job(ctx: dict[str, Any], *, t: int, s: int) -> None:
    await mark_done_async(t, s)


settings = {"queue": queue, "functions": [job], "concurrency": concurrency()}


async def connect() -> Queue:
    await queue.connect()
    return queue


async def enqueue(q: Queue, t: int, s: int) -> None:
    await q.enqueue("job", t=t, s=s)


async def close(q: Queue) -> None:
    await q.disconnect()
