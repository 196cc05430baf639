"""Conveyor on its default engine, SQLite: the conveyor peer's app, tasks and settings on a
file instead of Redis (no peer of its own; reported so the two engines can be compared).

The database is ``bench/.peers/sqlite/bench-<redis port>.db``, so two runs on one machine
(each with its own private Redis port) never share a file; the harness deletes it when the
library's runs are over. The completion marker is still the ``INCR bench:done`` on Redis that
every library does, so Redis CPU and commands per job measure the marker only.
"""

from __future__ import annotations

import os

from conveyor import Conveyor
from peers._common import QUEUE
from peers.conveyor_lib import close, enqueue, enqueue_bulk, make_app, prepare

__all__ = ["app", "close", "connect", "enqueue", "enqueue_bulk"]

NAME = "conveyor-sqlite"
REQUIREMENTS = ["-e", "{repo}"]
VERSION_PACKAGES = ["conveyor-jobs"]
BULK = "app.enqueue_many(items) (one transaction per 1,000 jobs)"
ENGINE_URL = "sqlite:///{bench}/.peers/sqlite/bench-{port}.db"
WORKER_ARGV = [
    "{bin}/conveyor",
    "worker",
    "peers.conveyor_sqlite:app",
    "--url",
    "{engine_url}",
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
    "noop": "as conveyor, on sqlite:///bench/.peers/sqlite/bench-<port>.db",
    "io": "not run (W0–W2 only)",
}
WORKLOADS = ["W0", "W1", "W2"]

# The harness expands ENGINE_URL and passes it to the producer and the workers alike.
app = make_app(os.environ.get("BENCH_ENGINE_URL", "sqlite:///.peers/sqlite/bench.db"))


async def connect() -> Conveyor:
    # FLUSHALL resets every Redis peer before a measurement but not a file: start from an
    # empty queue with no stored limits here instead.
    await app.purge(QUEUE)
    await app.set_limits(QUEUE)
    return await prepare(app)
