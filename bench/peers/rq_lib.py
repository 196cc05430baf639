"""RQ peer: sync, one job per fork (the default ``rq.Worker``)."""

from __future__ import annotations

from redis import Redis
from rq import Queue, get_current_job

from peers._common import QUEUE, mark_done_sync, redis_url

NAME = "rq"
REQUIREMENTS = ["rq==3.0.0", "redis[hiredis]"]
VERSION_PACKAGES = ["rq", "redis"]
BULK = "Queue.enqueue_many(prepare_data…, pipeline=)"
# rq runs one job at a time per worker process and forks a work horse per job (default Worker).
WORKER_ARGV = ["{bin}/rq", "worker", "{queue}", "--url", "{url}", "--logging_level", "WARNING"]
# W3: concurrency = number of worker processes, via the documented worker pool.
WORKER_ARGV_IO = [
    "{bin}/rq",
    "worker-pool",
    "{queue}",
    "-n",
    "{concurrency}",
    "--url",
    "{url}",
    "--logging-level",
    "WARNING",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 1, "io": 100}
SETTLE_S = 8.0
# Fork-per-job rq runs ~10^2 jobs/s here: 2,000 jobs keep W1/W4 inside the timeout.
MAX_BURST = 2_000
NOTES = {
    "noop": "`rq worker` (default Worker: fork per job), 1 job at a time per process",
    "io": "`rq worker-pool -n 100` (100 forking workers), time.sleep(0.02)",
}


def job(t: int, s: int) -> None:
    current = get_current_job()
    mark_done_sync(t, s, current.connection if current is not None else None)


def connect() -> Queue:
    return Queue(QUEUE, connection=Redis.from_url(redis_url()))


def enqueue(q: Queue, t: int, s: int) -> None:
    q.enqueue(job, t, s)


def enqueue_bulk(q: Queue, items: list[tuple[int, int]]) -> None:
    with q.connection.pipeline() as pipe:
        q.enqueue_many([Queue.prepare_data(job, (t, s)) for t, s in items], pipeline=pipe)
        pipe.execute()


def close(q: Queue) -> None:
    q.connection.close()
