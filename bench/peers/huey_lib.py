"""Huey peer: RedisHuey (blocking BRPOP), thread workers."""

from __future__ import annotations

from huey import RedisHuey

from peers._common import QUEUE, mark_done_sync, redis_url

NAME = "huey"
REQUIREMENTS = ["huey==3.5.4", "redis[hiredis]"]
VERSION_PACKAGES = ["huey", "redis"]
BULK = None  # huey has no bulk-enqueue API
WORKER_ARGV = [
    "{bin}/huey_consumer",
    "peers.huey_lib.huey",
    "-k",
    "thread",
    "-w",
    "{concurrency}",
    "-q",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "huey_consumer -k thread -w 10 (RedisHuey, blocking=True)",
    "io": "huey_consumer -k thread -w 100, time.sleep(0.02)",
}

huey = RedisHuey(QUEUE, url=redis_url())


@huey.task()
def job(t: int, s: int) -> None:
    mark_done_sync(t, s)


def connect() -> RedisHuey:
    return huey


def enqueue(h: RedisHuey, t: int, s: int) -> None:
    job(t, s)
