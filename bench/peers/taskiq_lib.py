"""taskiq peer: taskiq-redis RedisStreamBroker (acknowledged), asyncio worker."""

from __future__ import annotations

from taskiq_redis import RedisStreamBroker

from peers._common import QUEUE, mark_done_async, redis_url

NAME = "taskiq"
REQUIREMENTS = ["taskiq==0.13.0", "taskiq-redis==1.2.4", "redis[hiredis]"]
VERSION_PACKAGES = ["taskiq", "taskiq-redis", "redis"]
BULK = None  # taskiq has no bulk kiq API
WORKER_ARGV = [
    "{bin}/taskiq",
    "worker",
    "peers.taskiq_lib:broker",
    "--workers",
    "{processes}",
    "--max-async-tasks",
    "{concurrency}",
    "--log-level",
    "WARNING",
]
PROCESSES = "native"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "RedisStreamBroker, taskiq worker --workers P --max-async-tasks 10",
    "io": "--workers 1 --max-async-tasks 100, asyncio.sleep(0.02)",
}

broker = RedisStreamBroker(redis_url(), queue_name=QUEUE)


@broker.task(task_name="job")
async def job(t: int, s: int) -> None:
    await mark_done_async(t, s)


async def connect() -> RedisStreamBroker:
    await broker.startup()
    return broker


async def enqueue(b: RedisStreamBroker, t: int, s: int) -> None:
    await job.kiq(t, s)


async def close(b: RedisStreamBroker) -> None:
    await b.shutdown()
