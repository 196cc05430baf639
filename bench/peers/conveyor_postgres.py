"""Conveyor on its Postgres engine: the conveyor peer's app, tasks and settings on the
benchmark's Postgres database (schema ``conveyor``) instead of Redis.

The database is the one the harness creates for the run (``conveyor_bench_<redis port>`` on
the machine's Postgres, see ``PG_URL`` in the harness) and drops at the end. The completion
marker is still the ``INCR bench:done`` on Redis that every library does.
"""

from __future__ import annotations

import os

from conveyor import Conveyor
from peers._common import QUEUE
from peers.conveyor_lib import close, enqueue, enqueue_bulk, make_app, prepare

__all__ = ["app", "close", "connect", "enqueue", "enqueue_bulk", "setup"]

NAME = "conveyor-postgres"
REQUIREMENTS = ["-e", "{repo}[postgres]"]
VERSION_PACKAGES = ["conveyor-jobs", "psycopg", "psycopg-binary"]
BULK = "app.enqueue_many(items) (one statement per 1,000 jobs)"
ENGINE_URL = "{pg_url}?schema=conveyor"
WORKER_ARGV = [
    "{bin}/conveyor",
    "worker",
    "peers.conveyor_postgres:app",
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
    "noop": "as conveyor, on postgresql://…/conveyor_bench_<port>?schema=conveyor",
    "io": "conveyor worker --concurrency 100, asyncio.sleep(0.02)",
}
WORKLOADS = ["W0", "W1", "W2", "W3", "W5"]
# W5 as the conveyor peer (the harness reads this literal): the same enqueue and
# set_limits calls (conveyor_lib), enforced by the Postgres engine's fair claim.
FAIRNESS = (
    "enqueue(..., tenant=f't{i % 100}') and app.set_limits(queue, tenant_concurrency=2): "
    "claim_fair enforces the limit in the claim and serves tenants least recently served first"
)

app = make_app(os.environ.get("BENCH_ENGINE_URL", "postgresql://postgres@127.0.0.1/postgres"))


async def setup() -> None:
    """Create the schema (the engine's migrations run on connect) before any worker starts."""
    await app.connect()
    await app.close()


async def connect() -> Conveyor:
    # FLUSHALL resets every Redis peer before a measurement but not Postgres: start from an
    # empty queue with no stored limits here instead.
    await app.purge(QUEUE)
    await app.set_limits(QUEUE)
    return await prepare(app)
