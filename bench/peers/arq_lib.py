"""arq peer: asyncio, one process per worker, max_jobs concurrency."""

from __future__ import annotations

from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from peers._common import concurrency, mark_done_async, redis_url

NAME = "arq"
REQUIREMENTS = ["arq==0.28.0"]
VERSION_PACKAGES = ["arq", "redis"]
BULK = None  # arq has no bulk-enqueue API
WORKER_ARGV = [
    "{bin}/arq",
    "peers.arq_lib.WorkerSettings",
    "--custom-log-dict",
    "peers.arq_lib.LOG_CONFIG",
]
PROCESSES = "spawn"
CONCURRENCY = {"noop": 10, "io": 100}
NOTES = {
    "noop": "arq WorkerSettings max_jobs=10, default queue, per-job logging at WARNING",
    "io": "max_jobs=100, asyncio.sleep(0.02)",
}

# arq logs every job at INFO by default; keep its logging at WARNING like the other peers.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


async def job(ctx: dict[str, Any], t: int, s: int) -> None:
    await mark_done_async(t, s)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [job]
    redis_settings = RedisSettings.from_dsn(redis_url())
    max_jobs = concurrency()


async def connect() -> ArqRedis:
    return await create_pool(RedisSettings.from_dsn(redis_url()))


async def enqueue(pool: ArqRedis, t: int, s: int) -> None:
    await pool.enqueue_job("job", t, s)


async def close(pool: ArqRedis) -> None:
    await pool.aclose()
