"""Celery peer: Redis broker, no result backend, thread pool."""

from __future__ import annotations

from celery import Celery, group

from peers._common import QUEUE, mark_done_sync, redis_url

NAME = "celery"
REQUIREMENTS = ["celery[redis]==5.7.0", "redis[hiredis]"]
VERSION_PACKAGES = ["celery", "kombu", "redis"]
BULK = "group(sigs).apply_async()"
WORKER_ARGV = [
    "{bin}/celery",
    "-A",
    "peers.celery_lib",
    "worker",
    "-Q",
    "{queue}",
    "--pool=threads",
    "-c",
    "{concurrency}",
    "-n",
    "w{index}@%h",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--loglevel=WARNING",
]
WORKER_ARGV_CPU = [
    "{bin}/celery",
    "-A",
    "peers.celery_lib",
    "worker",
    "-Q",
    "{queue}",
    "--pool=prefork",
    "-c",
    "{concurrency}",
    "-n",
    "w{index}@%h",
    "--without-gossip",
    "--without-mingle",
    "--without-heartbeat",
    "--loglevel=WARNING",
]
CPU = "--pool=prefork -c 2, default prefetch (x4), ignore_result"
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100, "cpu": 2}
NOTES = {
    "noop": "--pool=threads -c 10, default prefetch (x4), ignore_result, "
    "--without-gossip/mingle/heartbeat",
    "io": "--pool=threads -c 100, time.sleep(0.02)",
}

app = Celery("bench", broker=redis_url())
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.job")
def job(t: int, s: int) -> None:
    mark_done_sync(t, s)


def connect() -> Celery:
    return app


def enqueue(a: Celery, t: int, s: int) -> None:
    job.apply_async((t, s))


def enqueue_bulk(a: Celery, items: list[tuple[int, int]]) -> None:
    group(job.s(t, s) for t, s in items).apply_async()


def close(a: Celery) -> None:
    a.close()
