"""Dramatiq peer: RedisBroker, default middleware, worker threads."""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers._common import QUEUE, mark_done_sync, redis_url

NAME = "dramatiq"
REQUIREMENTS = ["dramatiq[redis]==2.2.1", "redis[hiredis]"]
VERSION_PACKAGES = ["dramatiq", "redis"]
BULK = "group(messages).run()"
WORKER_ARGV = [
    "{bin}/dramatiq",
    "peers.dramatiq_lib",
    "--processes",
    "{processes}",
    "--threads",
    "{concurrency}",
    "--queues",
    "{queue}",
]
PROCESSES = "native"
CONCURRENCY = {"noop": 10, "io": 100, "cpu": 1}
CPU = "--processes 2 --threads 1, default middleware"
CPU_PROCESSES = 2
NOTES = {
    "noop": "--processes P --threads 10, default middleware",
    "io": "--processes 1 --threads 100, time.sleep(0.02)",
}

broker = RedisBroker(url=redis_url())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def job(t: int, s: int) -> None:
    mark_done_sync(t, s)


def connect() -> RedisBroker:
    return broker


def enqueue(b: RedisBroker, t: int, s: int) -> None:
    job.send(t, s)


def enqueue_bulk(b: RedisBroker, items: list[tuple[int, int]]) -> None:
    dramatiq.group(job.message(t, s) for t, s in items).run()


def close(b: RedisBroker) -> None:
    b.close()
